//! `cost_expr`: ai-rate-limiting's arithmetic over the provider's raw `usage` fields, e.g.
//! `prompt_tokens + 2 * completion_tokens` or
//! `input_tokens + cache_creation_input_tokens + output_tokens`.
//!
//! APISIX evaluates the text as Lua in a sandbox that offers `abs ceil floor max min` (also as
//! `math.abs` ...). aigate takes the arithmetic subset of that language with a small hand-written
//! parser instead of a scripting engine: nothing but numbers can happen, a mistake is found when
//! the config loads, and evaluating allocates nothing.
//!
//! Grammar (usual precedence, left-associative; unary minus binds tighter than `*` and `/`):
//!
//! ```text
//! expr    = term { ("+" | "-") term }
//! term    = unary { ("*" | "/") unary }
//! unary   = "-" unary | primary
//! primary = number | name | func "(" expr { "," expr } ")" | "(" expr ")"
//! number  = digits [ "." digits ] [ ("e" | "E") [ "+" | "-" ] digits ]   (also ".5", "5.")
//! name    = (letter | "_") { letter | digit | "_" }
//! func    = [ "math." ] ( "abs" | "ceil" | "floor" | "max" | "min" )
//! ```
//!
//! Numbers are doubles, as in Lua. A name is a usage field; a field the answer does not have is 0.
//! Nested fields are reachable by their bare name, breadth first so the shallowest wins (at one
//! depth, the first in key order), as APISIX's `inject_usage_vars` does: with
//! `{"prompt_tokens_details": {"cached_tokens": 5}}`, `cached_tokens` is 5. Only JSON numbers
//! count (a string "5" is not a number to Lua either), arrays are not entered, and a field named
//! like one of the functions is not a variable.
//!
//! The cost is the result rounded to the nearest integer and floored at 0; a result that is not
//! finite (a division by zero) is no cost at all, which is what APISIX does (it logs an error).

use std::fmt;

/// Deepest nesting accepted (parentheses, unary minus, function calls): keeps the recursive
/// parser and evaluator far from the stack's end whatever the config says.
pub const MAX_DEPTH: usize = 64;
/// Longest expression accepted, in bytes (a chain of `+` nests the tree one level per operator,
/// so this also bounds the evaluator's recursion).
pub const MAX_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Abs,
    Ceil,
    Floor,
    Max,
    Min,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name.strip_prefix("math.").unwrap_or(name) {
            "abs" => Func::Abs,
            "ceil" => Func::Ceil,
            "floor" => Func::Floor,
            "max" => Func::Max,
            "min" => Func::Min,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Ceil => "ceil",
            Func::Floor => "floor",
            Func::Max => "max",
            Func::Min => "min",
        }
    }
}

/// Names a usage field may not take (they are the sandbox's functions, as in APISIX).
fn reserved(name: &str) -> bool {
    name == "math" || Func::from_name(name).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Num(f64),
    /// Index into `CostExpr::vars`.
    Var(usize),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// A parsed `cost_expr`.
#[derive(Debug, Clone, PartialEq)]
pub struct CostExpr {
    root: Node,
    /// The field names it reads, each once, in order of first use.
    vars: Vec<Box<str>>,
}

/// Why a `cost_expr` was refused: what, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.at)
    }
}

impl CostExpr {
    pub fn parse(text: &str) -> Result<CostExpr, ExprError> {
        if text.len() > MAX_LEN {
            return Err(ExprError {
                at: MAX_LEN,
                message: format!("longer than {MAX_LEN} bytes"),
            });
        }
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
            vars: Vec::new(),
        };
        let root = p.expr()?;
        p.skip_ws();
        if p.i < p.s.len() {
            return Err(p.err(format!("unexpected {:?}", p.rest_token())));
        }
        Ok(CostExpr { root, vars: p.vars })
    }

    /// The usage field names the expression reads.
    pub fn vars(&self) -> &[Box<str>] {
        &self.vars
    }

    /// The value with `values[i]` for `vars()[i]` (missing entries are 0).
    pub fn eval(&self, values: &[f64]) -> f64 {
        eval(&self.root, values)
    }

    /// The cost of a raw `usage` object (JSON text): rounded, floored at 0; `None` when the
    /// result is not finite.
    pub fn cost_of_usage(&self, raw_usage: &[u8]) -> Option<u64> {
        let mut values = vec![0.0; self.vars.len()];
        if let Ok(serde_json::Value::Object(top)) =
            serde_json::from_slice::<serde_json::Value>(raw_usage)
        {
            self.bind_breadth_first(&top, &mut values);
        }
        to_cost(self.eval(&values))
    }

    /// The cost with these fields set and every other one 0 (estimates, and usage the gateway
    /// has no raw object for).
    pub fn cost_of_fields(&self, fields: &[(&str, u64)]) -> Option<u64> {
        let mut values = vec![0.0; self.vars.len()];
        for (name, v) in fields {
            if let Some(i) = self.vars.iter().position(|n| &**n == *name) {
                values[i] = *v as f64;
            }
        }
        to_cost(self.eval(&values))
    }

    /// APISIX's `inject_usage_vars`: each level's keys in sorted order (serde_json's map is
    /// sorted), numbers bound unless a shallower or earlier one already was, objects queued for
    /// the next level.
    fn bind_breadth_first(
        &self,
        top: &serde_json::Map<String, serde_json::Value>,
        values: &mut [f64],
    ) {
        let mut bound = vec![false; self.vars.len()];
        let mut level = vec![top];
        while !level.is_empty() && bound.iter().any(|b| !b) {
            let mut next = Vec::new();
            for obj in level {
                for (k, v) in obj {
                    match v {
                        serde_json::Value::Number(n) => {
                            if let Some(i) = self.vars.iter().position(|name| **name == **k) {
                                if !bound[i] {
                                    bound[i] = true;
                                    values[i] = n.as_f64().unwrap_or(0.0);
                                }
                            }
                        }
                        serde_json::Value::Object(o) => next.push(o),
                        _ => {}
                    }
                }
            }
            level = next;
        }
    }
}

/// Round to the nearest integer (halves up, as Lua's `floor(x + 0.5)`), floor at 0; `None` when
/// not finite. `as` saturates a huge value at `u64::MAX`; callers clamp to their own bound.
pub fn to_cost(v: f64) -> Option<u64> {
    if !v.is_finite() {
        return None;
    }
    Some((v + 0.5).floor().max(0.0) as u64)
}

fn eval(n: &Node, values: &[f64]) -> f64 {
    match n {
        Node::Num(x) => *x,
        Node::Var(i) => values.get(*i).copied().unwrap_or(0.0),
        Node::Neg(a) => -eval(a, values),
        Node::Bin(op, a, b) => {
            let (a, b) = (eval(a, values), eval(b, values));
            match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
            }
        }
        Node::Call(f, args) => {
            let mut it = args.iter().map(|a| eval(a, values));
            let first = it.next().unwrap_or(0.0);
            match f {
                Func::Abs => first.abs(),
                Func::Ceil => first.ceil(),
                Func::Floor => first.floor(),
                // Lua's math.max/min: keep the first unless a later one compares greater (less),
                // so a NaN argument only wins in first place.
                Func::Max => it.fold(first, |m, x| if x > m { x } else { m }),
                Func::Min => it.fold(first, |m, x| if x < m { x } else { m }),
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
    vars: Vec<Box<str>>,
}

impl Parser<'_> {
    fn err(&self, message: String) -> ExprError {
        ExprError {
            at: self.i,
            message,
        }
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    /// The token at the cursor, for messages.
    fn rest_token(&self) -> String {
        let rest = &self.s[self.i..];
        let n = rest
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len())
            .clamp(1, 16);
        String::from_utf8_lossy(&rest[..n.min(rest.len())]).into_owned()
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, ExprError> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Some(b'+') => BinOp::Add,
                Some(b'-') => BinOp::Sub,
                _ => return Ok(left),
            };
            self.i += 1;
            let right = self.term()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn term(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(b'*') => BinOp::Mul,
                Some(b'/') => BinOp::Div,
                _ => return Ok(left),
            };
            self.i += 1;
            let right = self.unary()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Neg(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        match self.peek() {
            None => Err(self.err("expression ends too early".into())),
            Some(b'(') => {
                self.i += 1;
                self.enter()?;
                let inner = self.expr()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return Err(self.err("missing )".into()));
                }
                self.i += 1;
                Ok(inner)
            }
            Some(b) if b.is_ascii_digit() || b == b'.' => self.number(),
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => self.name(),
            Some(_) => Err(self.err(format!("unexpected {:?}", self.rest_token()))),
        }
    }

    fn number(&mut self) -> Result<Node, ExprError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i - from
        };
        let mut n = digits(self);
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            n += digits(self);
        }
        if n == 0 {
            self.i = start;
            return Err(self.err("a lone . is not a number".into()));
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("exponent without digits".into()));
            }
        }
        // A number running straight into a name (`2x`) is a typo, not a product.
        if self
            .s
            .get(self.i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        {
            return Err(self.err(format!("malformed number near {:?}", self.rest_token())));
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
        let v: f64 = text.parse().map_err(|_| ExprError {
            at: start,
            message: format!("malformed number {text:?}"),
        })?;
        if !v.is_finite() {
            return Err(ExprError {
                at: start,
                message: format!("number {text} is too large"),
            });
        }
        Ok(Node::Num(v))
    }

    fn ident(&mut self) -> &str {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).expect("ASCII")
    }

    fn name(&mut self) -> Result<Node, ExprError> {
        let start = self.i;
        let mut name = self.ident().to_string();
        // `math.max` (APISIX's sandbox has `math`), or a dotted name that can only be a mistake.
        let dotted = self.s.get(self.i) == Some(&b'.')
            && self
                .s
                .get(self.i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
        if dotted {
            self.i += 1;
            let rest = self.ident().to_string();
            name = format!("{name}.{rest}");
        }
        if let Some(func) = Func::from_name(&name) {
            if self.peek() != Some(b'(') {
                return Err(ExprError {
                    at: start,
                    message: format!("{name} is a function: write {}(...)", func.name()),
                });
            }
            self.i += 1;
            self.enter()?;
            let mut args = vec![self.expr()?];
            while self.peek() == Some(b',') {
                self.i += 1;
                args.push(self.expr()?);
            }
            self.depth -= 1;
            if self.peek() != Some(b')') {
                return Err(self.err(format!("missing ) after the arguments of {name}")));
            }
            self.i += 1;
            let one = matches!(func, Func::Abs | Func::Ceil | Func::Floor);
            if one && args.len() != 1 {
                return Err(ExprError {
                    at: start,
                    message: format!("{name} takes one argument, not {}", args.len()),
                });
            }
            return Ok(Node::Call(func, args));
        }
        if name.contains('.') && !name.starts_with("math.") && self.peek() != Some(b'(') {
            return Err(ExprError {
                at: start,
                message: format!(
                    "{name:?}: a nested usage field is named without its parents ({:?})",
                    name.rsplit('.').next().unwrap_or_default()
                ),
            });
        }
        if reserved(&name) || name.contains('.') || self.peek() == Some(b'(') {
            return Err(ExprError {
                at: start,
                message: format!("unknown function {name:?} (abs, ceil, floor, max, min)"),
            });
        }
        let idx = match self.vars.iter().position(|v| **v == *name) {
            Some(i) => i,
            None => {
                self.vars.push(name.into_boxed_str());
                self.vars.len() - 1
            }
        };
        Ok(Node::Var(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::test_util::Rng;

    fn cost(expr: &str, usage: &str) -> Option<u64> {
        CostExpr::parse(expr)
            .unwrap()
            .cost_of_usage(usage.as_bytes())
    }

    #[test]
    fn arithmetic_and_precedence() {
        let u = r#"{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}"#;
        assert_eq!(cost("prompt_tokens + 2 * completion_tokens", u), Some(10));
        assert_eq!(cost("(prompt_tokens + 2) * completion_tokens", u), Some(18));
        assert_eq!(cost("total_tokens - prompt_tokens - 1", u), Some(2));
        assert_eq!(cost("total_tokens / 2", u), Some(4)); // 3.5 rounds up
        assert_eq!(cost("total_tokens / 4", u), Some(2)); // 1.75
        assert_eq!(cost("-prompt_tokens * -2", u), Some(8));
        assert_eq!(cost("--3", u), Some(3));
        assert_eq!(cost("2 - -1", u), Some(3));
        assert_eq!(cost("8 / 2 / 2", u), Some(2)); // left-associative
        assert_eq!(cost("10 - 4 - 3", u), Some(3));
        assert_eq!(cost(".5 + 5. + 1e1 + 2E-1", u), Some(16)); // 15.7
    }

    #[test]
    fn functions_like_apisix_sandbox() {
        let u = r#"{"prompt_tokens":4,"completion_tokens":3}"#;
        assert_eq!(cost("max(prompt_tokens, completion_tokens, 1)", u), Some(4));
        assert_eq!(cost("min(prompt_tokens, completion_tokens)", u), Some(3));
        assert_eq!(cost("math.max(1, 9)", u), Some(9));
        assert_eq!(cost("ceil(completion_tokens / 2)", u), Some(2));
        assert_eq!(cost("floor(completion_tokens / 2)", u), Some(1));
        assert_eq!(cost("abs(prompt_tokens - 10)", u), Some(6));
        assert_eq!(cost("max(7)", u), Some(7));
    }

    #[test]
    fn missing_fields_are_zero_and_results_are_clamped() {
        let u = r#"{"input_tokens":10,"output_tokens":5}"#;
        assert_eq!(
            cost(
                "input_tokens + cache_creation_input_tokens + output_tokens",
                u
            ),
            Some(15)
        );
        assert_eq!(cost("input_tokens - 100", u), Some(0), "floored at 0");
        assert_eq!(
            cost("output_tokens * 0.3", u),
            Some(2),
            "1.5 rounds half up"
        );
        assert_eq!(cost("output_tokens * 0.29", u), Some(1));
        assert_eq!(cost("input_tokens / 0", u), None, "not finite: no cost");
        assert_eq!(cost("0 / 0", u), None);
        assert_eq!(cost("prompt_tokens", "not json"), Some(0));
        assert_eq!(cost("prompt_tokens", "[1,2]"), Some(0));
    }

    #[test]
    fn nested_fields_by_bare_name_shallowest_first() {
        let u = r#"{
            "prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28,
            "prompt_tokens_details": {"cached_tokens": 5, "audio_tokens": 1,
                                      "deeper": {"cached_tokens": 99, "only_deep": 7}},
            "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 2},
            "list": [{"in_array": 1}],
            "text": "12",
            "max": 1000
        }"#;
        assert_eq!(cost("prompt_tokens - cached_tokens", u), Some(15));
        assert_eq!(cost("reasoning_tokens + only_deep", u), Some(10));
        // Same depth: the first key in sorted order wins (completion_tokens_details <
        // prompt_tokens_details), as APISIX sorts each level's keys.
        assert_eq!(cost("audio_tokens", u), Some(2));
        assert_eq!(
            cost("in_array + text", u),
            Some(0),
            "arrays and strings are not numbers"
        );
        // A field named like a function stays the function.
        assert_eq!(cost("max(1, 2)", u), Some(2));
        // A shallower number shadows a deeper one of the same name.
        let u2 = r#"{"cached_tokens": 1, "prompt_tokens_details": {"cached_tokens": 5}}"#;
        assert_eq!(cost("cached_tokens", u2), Some(1));
    }

    #[test]
    fn fields_for_estimates() {
        let e = CostExpr::parse("prompt_tokens + 2 * completion_tokens + cached_tokens").unwrap();
        assert_eq!(
            e.cost_of_fields(&[("prompt_tokens", 100), ("completion_tokens", 256)]),
            Some(612)
        );
        assert_eq!(e.vars().len(), 3);
    }

    #[test]
    fn syntax_errors_say_what_and_where() {
        for (bad, at, says) in [
            ("", 0, "ends too early"),
            ("prompt_tokens +", 15, "ends too early"),
            ("(1 + 2", 6, "missing )"),
            ("1 + 2)", 5, "unexpected"),
            ("prompt_tokens ^ 2", 14, "unexpected"),
            ("prompt_tokens % 2", 14, "unexpected"),
            ("2x", 1, "malformed number"),
            ("1.2.3", 3, "malformed number"),
            ("1e", 2, "exponent"),
            (".", 0, "lone ."),
            ("os.exit(1)", 0, "unknown function"),
            ("print(1)", 0, "unknown function"),
            ("math.pow(2, 3)", 0, "unknown function"),
            ("math", 0, "unknown function"),
            ("abs", 0, "is a function"),
            ("abs(1, 2)", 0, "one argument"),
            ("max()", 4, "unexpected"),
            (
                "prompt_tokens_details.cached_tokens",
                0,
                "without its parents",
            ),
            ("max(1 2)", 6, "missing )"),
            ("1e999", 0, "too large"),
            ("a b", 2, "unexpected"),
            ("\"x\"", 0, "unexpected"),
            ("prompt_tokens..completion_tokens", 13, "unexpected"),
        ] {
            let e = CostExpr::parse(bad).expect_err(bad);
            assert!(e.message.contains(says), "{bad:?}: {e}");
            assert_eq!(e.at, at, "{bad:?}: {e}");
        }
    }

    #[test]
    fn depth_and_length_are_bounded() {
        let deep = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(CostExpr::parse(&deep).is_ok());
        let deeper = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(CostExpr::parse(&deeper)
            .unwrap_err()
            .message
            .contains("deeper"));
        let negs = format!("{}1", "-".repeat(MAX_DEPTH + 1));
        assert!(CostExpr::parse(&negs)
            .unwrap_err()
            .message
            .contains("deeper"));
        let long = "1+".repeat(MAX_LEN);
        assert!(CostExpr::parse(&long)
            .unwrap_err()
            .message
            .contains("longer"));
        // Long but flat is fine: chains of + do not nest the parser's recursion.
        let flat = format!("{}1", "1 + ".repeat(MAX_LEN / 4 - 1));
        assert!(CostExpr::parse(&flat).is_ok());
    }

    // ---- property tests: random trees printed, parsed back, evaluated the same --------------

    const NAMES: [&str; 4] = ["prompt_tokens", "completion_tokens", "cached_tokens", "x_1"];

    /// A random expression as (text, value), with every variable bound to `vals`.
    fn gen(r: &mut Rng, depth: usize, vals: &[f64; 4], minimal_parens: bool) -> (String, f64, u8) {
        // The third element is the precedence of the text's top operator (3 = atom).
        let leaf = depth == 0 || r.below(4) == 0;
        if leaf {
            return if r.below(2) == 0 {
                let v = r.below(1000) as f64 / [1.0, 4.0, 10.0][r.below(3)];
                (format!("{v}"), v, 3)
            } else {
                let i = r.below(4);
                (NAMES[i].to_string(), vals[i], 3)
            };
        }
        match r.below(6) {
            0..=3 => {
                let (op, sym, prec) = [
                    (BinOp::Add, "+", 1),
                    (BinOp::Sub, "-", 1),
                    (BinOp::Mul, "*", 2),
                    (BinOp::Div, "/", 2),
                ][r.below(4)];
                let (a, av, ap) = gen(r, depth - 1, vals, minimal_parens);
                let (b, bv, bp) = gen(r, depth - 1, vals, minimal_parens);
                // Left operand: parenthesize if it binds looser; right: also if equal (left
                // associativity), unless the printer always parenthesizes.
                let wrap = |t: String, p: u8, strict: bool| {
                    if !minimal_parens || p < prec || (strict && p == prec) {
                        format!("({t})")
                    } else {
                        t
                    }
                };
                let text = format!("{} {sym} {}", wrap(a, ap, false), wrap(b, bp, true));
                let v = match op {
                    BinOp::Add => av + bv,
                    BinOp::Sub => av - bv,
                    BinOp::Mul => av * bv,
                    BinOp::Div => av / bv,
                };
                (text, v, prec)
            }
            4 => {
                let (a, av, ap) = gen(r, depth - 1, vals, minimal_parens);
                let t = if ap < 3 || !minimal_parens {
                    format!("-({a})")
                } else {
                    format!("-{a}")
                };
                (t, -av, 3)
            }
            _ => {
                let (a, av, _) = gen(r, depth - 1, vals, minimal_parens);
                let (b, bv, _) = gen(r, depth - 1, vals, minimal_parens);
                match r.below(5) {
                    0 => (format!("abs({a})"), av.abs(), 3),
                    1 => (format!("math.ceil({a})"), av.ceil(), 3),
                    2 => (format!("floor({a})"), av.floor(), 3),
                    3 => (format!("max({a}, {b})"), if bv > av { bv } else { av }, 3),
                    _ => (format!("min({a},{b})"), if bv < av { bv } else { av }, 3),
                }
            }
        }
    }

    #[test]
    fn property_printed_trees_parse_back_to_the_same_value() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..3000 {
            let vals = [
                r.below(5000) as f64,
                r.below(5000) as f64,
                r.below(100) as f64,
                r.below(10) as f64,
            ];
            let minimal = case % 2 == 0;
            let depth = 1 + r.below(6);
            let (text, want, _) = gen(&mut r, depth, &vals, minimal);
            let e = CostExpr::parse(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
            let bound: Vec<f64> = e
                .vars()
                .iter()
                .map(|n| vals[NAMES.iter().position(|m| m == &&**n).unwrap()])
                .collect();
            let got = e.eval(&bound);
            let same = (got.is_nan() && want.is_nan()) || got == want;
            assert!(same, "{text:?}: got {got}, want {want}");
            assert_eq!(to_cost(got), to_cost(want));
            // Through JSON: the variables as a usage object give the same cost.
            let usage = format!(
                r#"{{"prompt_tokens":{},"completion_tokens":{},"x_1":{},"d":{{"cached_tokens":{}}}}}"#,
                vals[0], vals[1], vals[3], vals[2]
            );
            assert_eq!(e.cost_of_usage(usage.as_bytes()), to_cost(want), "{text:?}");
        }
    }

    #[test]
    fn property_random_text_never_panics() {
        let alphabet = b"0123456789.eE+-*/() ,abcmx_pqrtsuno\t";
        let mut r = Rng(42);
        for _ in 0..20_000 {
            let n = r.below(40);
            let s: String = (0..n)
                .map(|_| alphabet[r.below(alphabet.len())] as char)
                .collect();
            if let Ok(e) = CostExpr::parse(&s) {
                let _ = e.cost_of_usage(br#"{"a":1,"b":{"c":2}}"#);
            }
        }
    }

    #[test]
    fn cost_rounding() {
        assert_eq!(to_cost(0.49), Some(0));
        assert_eq!(to_cost(0.5), Some(1));
        assert_eq!(to_cost(-3.0), Some(0));
        assert_eq!(to_cost(f64::INFINITY), None);
        assert_eq!(to_cost(f64::NAN), None);
        assert_eq!(to_cost(1e300), Some(u64::MAX));
    }
}
