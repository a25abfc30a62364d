//! `math_equal`'s evaluator: takes an answer and a reference written in plain text or simple
//! LaTeX (`\frac{1}{2}`, `50\%`, `2\sqrt{2}`, `\boxed{...}`); gives whether they name the same
//! number (exactly while both are small rationals, within a relative tolerance otherwise), or,
//! when either is not a number, whether their normalised strings are equal. It lives apart from
//! the verifiers because it is a parser and an evaluator, not a judgement of a completion.

use std::sync::OnceLock;

use regex::Regex;

use super::verifiers::last_boxed;

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

/// Recursive-descent parser over normalised answer text (no spaces, `\frac` forms unified).
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
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
                // Implicit multiplication, as in `2\sqrt{3}` or `3(4)`.
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
            Some(b'\\') => {
                self.s[self.pos..].starts_with(b"\\frac")
                    || self.s[self.pos..].starts_with(b"\\sqrt")
                    || self.s[self.pos..].starts_with(b"\\pi")
            }
            _ => false,
        }
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

    /// A LaTeX argument: a braced expression or a single digit (`\frac12`).
    fn argument(&mut self) -> Option<Num> {
        if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)
        } else {
            let d = self.peek().filter(u8::is_ascii_digit)?;
            self.pos += 1;
            Some(Num::Rat((d - b'0') as i128, 1))
        }
    }

    fn primary(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("(") {
            let v = self.expr()?;
            self.eat(")").then_some(v)?
        } else if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)?
        } else if self.eat("\\frac") {
            let n = self.argument()?;
            let d = self.argument()?;
            n.mul(d.recip()?)?
        } else if self.eat("\\sqrt") {
            let x = self.argument()?.f();
            if x < 0.0 {
                return None;
            }
            let r = x.sqrt();
            // Keep perfect squares exact so `\sqrt{4}` equals 2 exactly.
            if r.fract() == 0.0 && r < 1e15 {
                Num::Rat(r as i128, 1)
            } else {
                Num::Real(r)
            }
        } else if self.eat("\\pi") {
            Num::Real(std::f64::consts::PI)
        } else {
            self.number()?
        };
        self.depth -= 1;
        Some(v)
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
        if digits.len() <= 36 {
            let n: i128 = digits.parse().ok()?;
            Num::rat(n, 10i128.pow(frac.len() as u32))
        } else {
            format!("{int}.{frac}0").parse().ok().map(Num::Real)
        }
    }
}

fn parse_math(s: &str) -> Option<Num> {
    if s.is_empty() || !s.is_ascii() {
        return None;
    }
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    (p.pos == s.len() && v.f().is_finite()).then_some(v)
}

/// Normalises an answer: takes the last `\boxed{}`, strips math delimiters, spacing commands,
/// `\left`/`\right`, degree signs, dollar signs and thousands commas, unifies `\dfrac`/`\tfrac`,
/// `\cdot`/`\times`/`\div`, and keeps the right side of the last `=`.
fn normalise_math(s: &str) -> String {
    let s = last_boxed(s).unwrap_or(s);
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
    ] {
        t = t.replace(from, to);
    }
    static TEXT: OnceLock<Regex> = OnceLock::new();
    let text = TEXT
        .get_or_init(|| Regex::new(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}").expect("valid"));
    t = text.replace_all(&t, "$1").into_owned();
    t.retain(|c| !c.is_whitespace());
    if let Some(i) = t.rfind('=') {
        t = t[i + 1..].to_string();
    }
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    let thousands =
        THOUSANDS.get_or_init(|| Regex::new(r"(\d),(\d{3})(?:\b|$|[^\d])").expect("valid"));
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

/// The numeric readings of a normalised answer: a trailing `%` allows both `x` and `x/100`,
/// and trailing units (letters) are dropped when the rest is a number.
fn math_values(t: &str) -> Vec<Num> {
    let (body, percent) = match t.strip_suffix('%') {
        Some(b) => (b, true),
        None => (t, false),
    };
    let value = parse_math(body).or_else(|| {
        let stripped = body.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        (stripped.len() < body.len())
            .then(|| parse_math(stripped))
            .flatten()
    });
    let Some(v) = value else {
        return Vec::new();
    };
    if percent {
        let hundredth = v.mul(Num::Rat(1, 100)).unwrap_or(Num::Real(v.f() / 100.0));
        vec![v, hundredth]
    } else {
        vec![v]
    }
}

fn nums_equal(a: Num, b: Num, rel_tol: f64) -> bool {
    match (a, b) {
        (Num::Rat(p, q), Num::Rat(r, s)) => p == r && q == s,
        _ => {
            let (x, y) = (a.f(), b.f());
            (x - y).abs() <= rel_tol * x.abs().max(y.abs()).max(1.0)
        }
    }
}

/// Whether two answers are mathematically equal: as numbers when both read as numbers (exact
/// for rationals), else as normalised strings.
pub fn math_equal(answer: &str, reference: &str, rel_tol: f64) -> bool {
    let a = normalise_math(answer);
    let b = normalise_math(reference);
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (va, vb) = (math_values(&a), math_values(&b));
    if !va.is_empty() && !vb.is_empty() {
        return va
            .iter()
            .any(|x| vb.iter().any(|y| nums_equal(*x, *y, rel_tol)));
    }
    a == b
}
