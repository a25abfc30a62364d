//! `math_equal`'s evaluator: takes an answer and a reference written in plain text or simple
//! LaTeX (`\frac{1}{2}`, `50\%`, `2\sqrt{2}`, `x^2+1`, `\boxed{...}`, `(1, 2)`); gives whether
//! they name the same mathematical object. Numbers compare exactly while both are small
//! rationals and within a relative tolerance otherwise; expressions with variables compare by
//! evaluation at a fixed set of points; tuples, intervals and sets element by element; anything
//! else by its normalised string. A completion written as prose has its answer picked out first
//! (`answer_text`). docs/graders.md states each rule and where it differs from math_verify. It
//! lives apart from the verifiers because it is a parser and an evaluator, not a judgement of a
//! completion.

use std::sync::OnceLock;

use regex::Regex;

use super::verifiers::{find_numbers, last_boxed};

/// A number kept exact while it is rational and small enough for `i128`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Rat(i128, i128),
    Real(f64),
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Num {
    fn rat(n: i128, d: i128) -> Option<Num> {
        if d == 0 {
            return None;
        }
        // Unsigned magnitudes, because `i128::MIN.abs()` overflows.
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1);
        let Ok(g) = i128::try_from(g) else {
            return Some(Num::Real(n as f64 / d as f64));
        };
        let (n, d) = (n / g, d / g);
        Some(if d < 0 {
            match (n.checked_neg(), d.checked_neg()) {
                (Some(n), Some(d)) => Num::Rat(n, d),
                _ => Num::Real(n as f64 / d as f64),
            }
        } else {
            Num::Rat(n, d)
        })
    }

    fn f(self) -> f64 {
        match self {
            Num::Rat(n, d) => n as f64 / d as f64,
            Num::Real(x) => x,
        }
    }

    fn add(self, o: Num) -> Option<Num> {
        if let (Num::Rat(a, b), Num::Rat(c, d)) = (self, o) {
            let exact = (|| {
                let n = a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?;
                Num::rat(n, b.checked_mul(d)?)
            })();
            if exact.is_some() {
                return exact;
            }
        }
        Some(Num::Real(self.f() + o.f()))
    }

    fn neg(self) -> Num {
        match self {
            Num::Rat(n, d) => n
                .checked_neg()
                .map_or(Num::Real(-(n as f64) / d as f64), |n| Num::Rat(n, d)),
            Num::Real(x) => Num::Real(-x),
        }
    }

    fn mul(self, o: Num) -> Option<Num> {
        if let (Num::Rat(a, b), Num::Rat(c, d)) = (self, o) {
            if let (Some(n), Some(m)) = (a.checked_mul(c), b.checked_mul(d)) {
                return Num::rat(n, m);
            }
        }
        Some(Num::Real(self.f() * o.f()))
    }

    fn recip(self) -> Option<Num> {
        match self {
            Num::Rat(n, d) => Num::rat(d, n),
            Num::Real(x) if x != 0.0 => Some(Num::Real(1.0 / x)),
            Num::Real(_) => None,
        }
    }

    fn pow(self, e: Num) -> Option<Num> {
        if let Num::Rat(k, 1) = e {
            if k.unsigned_abs() <= 64 {
                let mut acc = Num::Rat(1, 1);
                for _ in 0..k.unsigned_abs() {
                    acc = acc.mul(self)?;
                }
                return if k < 0 { acc.recip() } else { Some(acc) };
            }
        }
        let r = self.f().powf(e.f());
        r.is_finite().then_some(Num::Real(r))
    }
}

/// How many points an expression with variables is evaluated at. A polynomial identity that
/// holds at this many generic points is almost surely an identity.
const POINTS: usize = 8;

/// The least number of points both sides must be defined at to be called equal.
const MIN_DEFINED_POINTS: usize = 4;

/// The value variable `name` takes at evaluation point `point`: a fixed, well-spread number in
/// [0.5, 3), different for each name and point, so results are reproducible. Positive values
/// keep `\sqrt{x}` and `\ln x` defined, and irrational-looking ones avoid accidental roots.
fn variable_value(name: &str, point: usize) -> f64 {
    // FNV-1a over the name and point, then a golden-ratio step to spread the points.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain((point as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    0.5 + 2.5 * (unit + 0.618_033_988_749_895 * point as f64).fract()
}

/// A function of one real argument.
type Function = fn(f64) -> f64;

/// The functions the parser knows, as (name, function). Longer names first, because after
/// whitespace is removed `\sin x` reads `\sinx` and names are matched as prefixes.
const FUNCTIONS: [(&str, Function); 6] = [
    ("sin", f64::sin),
    ("cos", f64::cos),
    ("tan", f64::tan),
    ("exp", f64::exp),
    ("log", f64::ln),
    ("ln", f64::ln),
];

/// Greek letters, read as variables.
const GREEK: [&str; 14] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi",
    "omega", "rho", "nu",
];

/// Recursive-descent parser over normalised answer text (no spaces, `\frac` forms unified).
/// Variables take their values at evaluation point `point`; `vars` records whether any was
/// read, because a constant compares exactly and an expression only by evaluation.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
    point: usize,
    vars: bool,
}

const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn rest(&self) -> &[u8] {
        &self.s[self.pos..]
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Num> {
        self.enter()?;
        let mut acc = self.term()?;
        loop {
            if self.eat("+") {
                acc = acc.add(self.term()?)?;
            } else if self.eat("-") {
                acc = acc.add(self.term()?.neg())?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Some(acc)
    }

    fn term(&mut self) -> Option<Num> {
        let mut acc = self.unary()?;
        loop {
            if self.eat("*") {
                acc = acc.mul(self.unary()?)?;
            } else if self.eat("/") {
                acc = acc.mul(self.unary()?.recip()?)?;
            } else if self.starts_primary() {
                // Implicit multiplication, as in `2\sqrt{3}`, `3(4)`, `2x` or `ab`.
                acc = acc.mul(self.power()?)?;
            } else {
                break;
            }
        }
        Some(acc)
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(b'(' | b'{') => true,
            Some(c) if c.is_ascii_alphanumeric() => true,
            Some(b'\\') => self.command().is_some(),
            _ => false,
        }
    }

    /// The known command at the cursor (without its backslash), if any.
    fn command(&self) -> Option<&'static str> {
        let rest = self.rest().strip_prefix(b"\\")?;
        ["frac", "sqrt", "pi"]
            .into_iter()
            .chain(FUNCTIONS.iter().map(|(name, _)| *name))
            .chain(GREEK)
            .find(|name| rest.starts_with(name.as_bytes()))
    }

    fn unary(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("-") {
            self.unary()?.neg()
        } else if self.eat("+") {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(v)
    }

    fn power(&mut self) -> Option<Num> {
        let base = self.primary()?;
        if self.eat("^") {
            let e = self.argument()?;
            return base.pow(e);
        }
        Some(base)
    }

    /// A LaTeX argument: a braced expression, a single digit (`\frac12`, `x^23` is `x^2 3`)
    /// or a single primary (`2^x`, `\sin x`).
    fn argument(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)?
        } else if let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            self.pos += 1;
            Num::Rat((d - b'0') as i128, 1)
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Some(v)
    }

    /// An argument that is a plain integer (`{2}` or `2`), for mixed numbers; `None` leaves
    /// the cursor where it was.
    fn integer_argument(&mut self) -> Option<i128> {
        let start = self.pos;
        let braced = self.eat("{");
        let digits_start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) && (braced || self.pos == start) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[digits_start..self.pos]).ok()?;
        let value = digits.parse().ok().filter(|_| !braced || self.eat("}"));
        if value.is_none() {
            self.pos = start;
        }
        value
    }

    /// `\frac{n}{d}` of two plain integers right after an integer: the mixed number
    /// `3\frac{1}{2}` = 3 + 1/2, as in school answers and math_verify; anything else leaves
    /// the cursor where it was and reads as a product.
    fn mixed_fraction(&mut self) -> Option<Num> {
        let start = self.pos;
        let fraction = (|| {
            if !self.eat("\\frac") {
                return None;
            }
            let n = self.integer_argument()?;
            let d = self.integer_argument()?;
            Num::rat(n, d)
        })();
        if fraction.is_none() {
            self.pos = start;
        }
        fraction
    }

    fn primary(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("(") {
            let v = self.expr()?;
            self.eat(")").then_some(v)?
        } else if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)?
        } else if self.peek() == Some(b'\\') {
            let name = self.command()?;
            self.pos += 1 + name.len();
            self.command_value(name)?
        } else if let Some(c) = self.peek().filter(u8::is_ascii_alphabetic) {
            self.pos += 1;
            if c == b'e' {
                // `e` is Euler's number, as in math_verify, so `\ln(e^2)` is 2.
                Num::Real(std::f64::consts::E)
            } else {
                self.vars = true;
                Num::Real(variable_value(&(c as char).to_string(), self.point))
            }
        } else {
            let start = self.pos;
            let n = self.number()?;
            let integer = self.s[start..self.pos].iter().all(u8::is_ascii_digit);
            match (integer, n) {
                (true, Num::Rat(..)) => match self.mixed_fraction() {
                    Some(f) => n.add(f)?,
                    None => n,
                },
                _ => n,
            }
        };
        self.depth -= 1;
        Some(v)
    }

    fn command_value(&mut self, name: &str) -> Option<Num> {
        Some(match name {
            "frac" => {
                let n = self.argument()?;
                let d = self.argument()?;
                n.mul(d.recip()?)?
            }
            "sqrt" => {
                let index = if self.eat("[") {
                    let k = self.expr()?;
                    self.eat("]").then_some(k)?
                } else {
                    Num::Rat(2, 1)
                };
                let x = self.argument()?.f();
                let k = index.f();
                if x < 0.0 || k == 0.0 {
                    return None;
                }
                let r = if k == 2.0 { x.sqrt() } else { x.powf(1.0 / k) };
                // Keep perfect roots exact so `\sqrt{4}` equals 2 exactly.
                let rounded = r.round();
                if rounded < 1e15 && (rounded.powf(k) - x).abs() == 0.0 {
                    Num::Rat(rounded as i128, 1)
                } else {
                    Num::Real(r)
                }
            }
            "pi" => Num::Real(std::f64::consts::PI),
            _ => {
                if let Some((_, f)) = FUNCTIONS.iter().find(|(n, _)| *n == name) {
                    // `\sin^2 x` is `(\sin x)^2`.
                    let exponent = if self.eat("^") {
                        Some(self.argument()?)
                    } else {
                        None
                    };
                    let x = f(self.argument()?.f());
                    let v = Num::Real(x).pow(exponent.unwrap_or(Num::Rat(1, 1)))?;
                    return v.f().is_finite().then_some(v);
                }
                self.vars = true;
                Num::Real(variable_value(name, self.point))
            }
        })
    }

    fn number(&mut self) -> Option<Num> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let int_end = self.pos;
        let mut frac = "";
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let f0 = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            frac = std::str::from_utf8(&self.s[f0..self.pos]).ok()?;
        }
        let int = std::str::from_utf8(&self.s[start..int_end]).ok()?;
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let digits = format!("{int}{frac}");
        let mantissa = if digits.len() <= 36 {
            let n: i128 = digits.parse().ok()?;
            Num::rat(n, 10i128.pow(frac.len() as u32))?
        } else {
            Num::Real(format!("{int}.{frac}0").parse().ok()?)
        };
        // E notation (`1.5e3`) is a number, not a product with Euler's number.
        let before_exponent = self.pos;
        if self.eat("e") || self.eat("E") {
            let negative = self.eat("-");
            if !negative {
                self.eat("+");
            }
            let e0 = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) && self.pos - e0 < 4 {
                self.pos += 1;
            }
            let exponent: Option<i128> = std::str::from_utf8(&self.s[e0..self.pos])
                .ok()
                .and_then(|d| d.parse().ok());
            match exponent {
                Some(k) => {
                    let k = if negative { -k } else { k };
                    return mantissa.mul(Num::Rat(10, 1).pow(Num::Rat(k, 1))?);
                }
                None => self.pos = before_exponent,
            }
        }
        Some(mantissa)
    }
}

/// The value of normalised text at evaluation point `point`, and whether it has variables.
fn evaluate(s: &str, point: usize) -> Option<(Num, bool)> {
    if s.is_empty() || !s.is_ascii() || has_word(s) {
        return None;
    }
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
        point,
        vars: false,
    };
    let v = p.expr()?;
    (p.pos == s.len() && v.f().is_finite()).then_some((v, p.vars))
}

/// Whether `s` has a run of three or more letters outside a LaTeX command: a word, not a
/// product of variables (`Paris` is not P·a·r·i·s).
fn has_word(s: &str) -> bool {
    static RE: OnceLock<[Regex; 2]> = OnceLock::new();
    let [command, word] = RE.get_or_init(|| {
        [
            Regex::new(r"\\[A-Za-z]+").expect("valid"),
            Regex::new(r"[A-Za-z]{3,}").expect("valid"),
        ]
    });
    word.is_match(&command.replace_all(s, " "))
}

/// One numeric reading of an answer: a constant, or an expression's values at the evaluation
/// points (`None` where it is undefined there).
#[derive(Debug, Clone)]
enum Reading {
    Const(Num),
    Values(Vec<Option<f64>>),
}

fn reading(s: &str) -> Option<Reading> {
    let (v, vars) = evaluate(s, 0)?;
    if !vars {
        return Some(Reading::Const(v));
    }
    let values = (0..POINTS)
        .map(|k| evaluate(s, k).map(|(v, _)| v.f()))
        .collect();
    Some(Reading::Values(values))
}

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid pattern"))
}

/// Whether a completion reads as prose (it has a word outside LaTeX commands and `\text{}`)
/// rather than as an answer on its own.
fn is_prose(s: &str) -> bool {
    static TEXT: OnceLock<Regex> = OnceLock::new();
    let text = regex(&TEXT, r"\\(?:text|mathrm|textbf|mbox)\{[^{}]*\}");
    has_word(&text.replace_all(s, " "))
}

/// The answer a completion gives, for `math_equal`: the last `\boxed{}`; else the whole text
/// when it is not prose; else what follows the last "answer is" / "answer:" up to the end of
/// its sentence (that segment itself, or its last number when it is prose too); else the last
/// inline maths (`$...$`, `\(...\)`, `\[...\]`); else the last number; else the whole text.
pub fn answer_text(text: &str) -> String {
    if let Some(boxed) = last_boxed(text) {
        return boxed.to_string();
    }
    if !is_prose(text) {
        return text.to_string();
    }
    static MARKER: OnceLock<Regex> = OnceLock::new();
    let marker = regex(&MARKER, r"(?i)\banswer\s*(?:is|:)\s*");
    if let Some(m) = marker.find_iter(text).last() {
        let rest = &text[m.end()..];
        static END: OnceLock<Regex> = OnceLock::new();
        // A sentence ends at a full stop followed by a space or the end, or at a line break;
        // a full stop inside a number (`3.5`) does not end it.
        let end = regex(&END, r"\.(?:\s|$)|\n");
        let segment = end.find(rest).map_or(rest, |e| &rest[..e.start()]).trim();
        if !segment.is_empty() && !is_prose(segment) {
            return segment.to_string();
        }
        if let Some(n) = find_numbers(segment).pop() {
            return n.text;
        }
    }
    static MATH: OnceLock<Regex> = OnceLock::new();
    let math = regex(
        &MATH,
        r"(?s)\$\$(.+?)\$\$|\$((?:\\\$|[^$])+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]",
    );
    if let Some(caps) = math.captures_iter(text).last() {
        if let Some(m) = (1..=4).find_map(|i| caps.get(i)) {
            return m.as_str().to_string();
        }
    }
    match find_numbers(text).pop() {
        Some(n) => n.text,
        None => text.to_string(),
    }
}

/// Normalises an answer: strips math delimiters, spacing commands, `\left`/`\right`, degree
/// signs, dollar signs, trailing units (`5 cm`, `5\text{ cm}`) and thousands commas, unifies
/// `\dfrac`/`\tfrac`, `\cdot`/`\times`/`\div`, the Unicode minus, times and division signs, and
/// keeps the right side of the last `=`.
fn normalise_math(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
        ("\\%", "%"),
        ("{,}", ""),
        ("\u{2212}", "-"),
        ("×", "*"),
        ("·", "*"),
        ("÷", "/"),
        ("π", "\\pi"),
    ] {
        t = t.replace(from, to);
    }
    static UNIT: OnceLock<Regex> = OnceLock::new();
    // A word (two letters or more, or any `\text{}`) after a number at the end is a unit.
    let unit = regex(
        &UNIT,
        r"(\d%?)\s*(?:\\(?:text|mathrm|mbox)\{[^{}]*\}|\s[A-Za-z]{2,}(?:\s+[A-Za-z]+)*)\s*\.?$",
    );
    t = unit.replace(&t, "$1").into_owned();
    static TEXT: OnceLock<Regex> = OnceLock::new();
    let text = regex(&TEXT, r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}");
    t = text.replace_all(&t, "$1").into_owned();
    t.retain(|c| !c.is_whitespace());
    if let Some(i) = t.rfind('=') {
        t = t[i + 1..].to_string();
    }
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    let thousands = regex(&THOUSANDS, r"(\d),(\d{3})(?:\b|$|[^\d])");
    // Each pass removes one comma per group; repeat until stable (`1,234,567`).
    loop {
        let next = thousands
            .replace_all(&t, |c: &regex::Captures| {
                let whole = c.get(0).map_or("", |m| m.as_str());
                format!("{}{}", &c[1], &whole[2..])
            })
            .into_owned();
        if next == t {
            break;
        }
        t = next;
    }
    t.trim_end_matches('.').to_string()
}

/// The numeric readings of a normalised answer: a trailing `%` allows both `x` and `x/100`.
fn math_values(t: &str) -> Vec<Reading> {
    let (body, percent) = match t.strip_suffix('%') {
        Some(b) => (b, true),
        None => (t, false),
    };
    match reading(body) {
        Some(Reading::Const(v)) if percent => {
            let hundredth = v.mul(Num::Rat(1, 100)).unwrap_or(Num::Real(v.f() / 100.0));
            vec![Reading::Const(v), Reading::Const(hundredth)]
        }
        Some(r) if !percent => vec![r],
        _ => Vec::new(),
    }
}

fn nums_equal(a: Num, b: Num, rel_tol: f64) -> bool {
    match (a, b) {
        (Num::Rat(p, q), Num::Rat(r, s)) => p == r && q == s,
        _ => close(a.f(), b.f(), rel_tol),
    }
}

fn close(x: f64, y: f64, rel_tol: f64) -> bool {
    (x - y).abs() <= rel_tol * x.abs().max(y.abs()).max(1.0)
}

fn readings_equal(a: &Reading, b: &Reading, rel_tol: f64) -> bool {
    let values = |r: &Reading| match r {
        Reading::Const(v) => vec![Some(v.f()); POINTS],
        Reading::Values(v) => v.clone(),
    };
    match (a, b) {
        (Reading::Const(x), Reading::Const(y)) => nums_equal(*x, *y, rel_tol),
        _ => {
            let (xs, ys) = (values(a), values(b));
            let mut defined = 0;
            for (x, y) in xs.iter().zip(&ys) {
                match (x, y) {
                    (Some(x), Some(y)) if close(*x, *y, rel_tol) => defined += 1,
                    (None, None) => {}
                    _ => return false,
                }
            }
            defined >= MIN_DEFINED_POINTS
        }
    }
}

/// A tuple, interval, list or set: its brackets (empty for a bare list, `{}` for a set) and
/// its top-level elements, when there are at least two.
fn as_list(t: &str) -> Option<(char, char, Vec<&str>)> {
    let (open, close, inner) =
        if let Some(inner) = t.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
            ('{', '}', inner)
        } else {
            let first = t.chars().next()?;
            let last = t.chars().next_back()?;
            if matches!(first, '(' | '[') && matches!(last, ')' | ']') && t.len() >= 2 {
                (first, last, &t[1..t.len() - 1])
            } else {
                (' ', ' ', t)
            }
        };
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    parts.push(&inner[start..]);
    (parts.len() >= 2 && depth == 0).then_some((open, close, parts))
}

/// The deepest nesting of tuples and sets compared; deeper answers compare as strings.
const MAX_LIST_DEPTH: usize = 8;

fn normalised_equal(a: &str, b: &str, rel_tol: f64, depth: usize) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if depth < MAX_LIST_DEPTH {
        match (as_list(a), as_list(b)) {
            (Some((ao, ac, xs)), Some((bo, bc, ys))) => {
                if (ao, ac) != (bo, bc) || xs.len() != ys.len() {
                    return false;
                }
                let eq = |x: &str, y: &str| normalised_equal(x, y, rel_tol, depth + 1);
                if ao == '{' {
                    // A set: each element matches a distinct element of the other.
                    let mut used = vec![false; ys.len()];
                    return xs.iter().all(|x| {
                        let hit = (0..ys.len()).find(|&j| !used[j] && eq(x, ys[j]));
                        hit.map(|j| used[j] = true).is_some()
                    });
                }
                return xs.iter().zip(&ys).all(|(x, y)| eq(x, y));
            }
            (None, None) => {}
            _ => return false,
        }
    }
    let (va, vb) = (math_values(a), math_values(b));
    if !va.is_empty() && !vb.is_empty() {
        return va
            .iter()
            .any(|x| vb.iter().any(|y| readings_equal(x, y, rel_tol)));
    }
    a == b
}

/// Whether a completion's answer equals the reference as mathematics. The completion's
/// answer is picked out of prose by [`answer_text`]; the reference is an answer already, so
/// only its last `\boxed{}` is taken. Numbers compare exactly while rational, otherwise and
/// for expressions with variables within `rel_tol`; tuples and sets element by element; the
/// rest as normalised strings.
pub fn math_equal(answer: &str, reference: &str, rel_tol: f64) -> bool {
    let a = normalise_math(&answer_text(answer));
    let b = normalise_math(last_boxed(reference).unwrap_or(reference));
    normalised_equal(&a, &b, rel_tol, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_picked_out_of_prose() {
        assert_eq!(answer_text(r"so $\boxed{7}$."), "7");
        assert_eq!(answer_text("x = 12"), "x = 12");
        assert_eq!(answer_text("The answer is \u{2212}3."), "\u{2212}3");
        assert_eq!(answer_text("So the final answer is 12 apples."), "12");
        assert_eq!(answer_text(r"Hence $x = 5$, done"), "x = 5");
        assert_eq!(answer_text("I count 3, then 4 more"), "4");
        assert_eq!(answer_text("no idea"), "no idea");
    }

    #[test]
    fn expressions_compare_by_value_at_fixed_points() {
        let eq = |a: &str, b: &str| math_equal(a, b, 1e-9);
        assert!(eq("x^2+1", "1+x^2"));
        assert!(eq(r"\frac{x}{2}", "x/2"));
        assert!(eq(r"\sin^2 x+\cos^2 x", "1"));
        assert!(!eq("x^2+1", "x^2-1"));
        assert!(!eq("2x", "2"), "a single letter is a variable, not a unit");
        assert!(!eq("sirap", "Paris"), "words are not products of letters");
        assert!(eq(r"3\frac{1}{2}", "3.5"));
        assert!(eq(r"2\frac{x}{3}", r"\frac{2x}{3}"));
        // The points are fixed, so the verdict is the same on every call.
        assert_eq!(variable_value("x", 3), variable_value("x", 3));
        assert_ne!(variable_value("x", 3), variable_value("y", 3));
    }

    #[test]
    fn tuples_intervals_and_sets() {
        let eq = |a: &str, b: &str| math_equal(a, b, 1e-9);
        assert!(eq("(1, 2)", "(1,2)"));
        assert!(!eq("(2, 1)", "(1,2)"));
        assert!(eq(r"\{1,2\}", r"\{2, 1\}"));
        assert!(!eq(r"\{1,1\}", r"\{1, 2\}"));
        assert!(!eq("(0, 1]", "[0,1)"));
        assert!(eq(r"(\frac{1}{2}, x+1)", "(0.5, 1+x)"));
    }
}
