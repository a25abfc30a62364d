//! Reward verifiers: take a sample (prompt, completion, the source row's fields) and give an
//! [`Outcome`]: a score, or "not applicable" with the reason (never a silent 0).
//!
//! A verifier is built once from the plan's [`recap_plan::Verifier`] (regexes compiled, options
//! checked) and then called per sample. The plan's extractor chain (`tag("answer")`,
//! `after("####")`, `last_number`, ...) runs on the completion first; a completion the chain
//! cannot extract from scores 0, because the model failed to produce the required form, as in
//! TRL's reward functions. A sample whose reference field is missing or malformed is
//! `NotApplicable`, because no score would be honest. [`score_batch`] runs a set of verifiers
//! over a batch and catches panics per call, turning each into a [`VerifierFailure`] that names
//! the verifier and the sample, so one bad call does not kill the run.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use recap_plan::{ExtractStep, Extractor, VerifierSpec};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::math::math_equal;

/// The result of one verifier call on one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Score(f64),
    NotApplicable(String),
}

impl Outcome {
    pub fn score(&self) -> Option<f64> {
        match self {
            Outcome::Score(s) => Some(*s),
            Outcome::NotApplicable(_) => None,
        }
    }

    fn from_bool(ok: bool) -> Self {
        Outcome::Score(if ok { 1.0 } else { 0.0 })
    }
}

/// One sample as the verifiers see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// A label for error reports, e.g. `math:17` (source and row).
    pub id: &'a str,
    pub prompt: &'a str,
    pub completion: &'a str,
    /// The source row's fields (after the source's field mapping), where references live.
    pub fields: &'a serde_json::Map<String, Value>,
    /// The completion's length in tokens, when the caller knows it (for `length_penalty`).
    pub completion_tokens: Option<usize>,
}

/// Applies the plan's extractor steps to `start` (the whole text when the chain has no `field`
/// step), reading `field` steps from `row`. Gives `None` when a step finds nothing. Sources use
/// it on their rows, verifiers on completions.
pub fn apply_extractor(
    ex: &Extractor,
    row: Option<&Map<String, Value>>,
    start: &str,
) -> Option<String> {
    let mut current = start.to_string();
    for step in &ex.steps {
        current = match step {
            ExtractStep::Field { name } => value_text(row?.get(name.as_str())?)?,
            ExtractStep::After { marker } => {
                let at = current.rfind(marker.as_str())? + marker.len();
                current[at..].trim().to_string()
            }
            ExtractStep::Before { marker } => {
                let at = current.find(marker.as_str())?;
                current[..at].trim().to_string()
            }
            ExtractStep::Tag { name } => {
                let open = format!("<{name}>");
                let close = format!("</{name}>");
                let start = current.rfind(&open)? + open.len();
                let end = current[start..].find(&close)? + start;
                current[start..end].trim().to_string()
            }
            ExtractStep::LastNumber => find_numbers(&current).last()?.text.clone(),
            ExtractStep::FirstNumber => find_numbers(&current).first()?.text.clone(),
            ExtractStep::LeadingInteger => leading_integer_regex()
                .find(&current)?
                .as_str()
                .trim_start()
                .to_string(),
            ExtractStep::Trim => current.trim().to_string(),
        };
    }
    Some(current)
}

/// A JSON value as text: strings as they are, numbers and booleans printed, others `None`.
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The relative tolerance `math_equal` compares values with when either is irrational
/// (rationals compare exactly); the language has no option for it.
const MATH_REL_TOL: f64 = 1e-9;

/// A configuration the verifier cannot be built from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("verifier `{verifier}`: {message}")]
pub struct ConfigError {
    pub verifier: String,
    pub message: String,
}

/// Anything that scores samples; the built-in [`Verifier`] and user code alike.
pub trait Verify: Send + Sync {
    fn name(&self) -> &str;
    fn verify(&self, sample: &Sample) -> Outcome;
}

/// A built verifier: the plan's verifier, checked, with its compiled parts.
#[derive(Debug, Clone)]
pub struct Verifier {
    plan: recap_plan::Verifier,
    compiled: Option<Regex>,
}

impl Verifier {
    pub fn new(plan: &recap_plan::Verifier) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            verifier: plan.name.to_string(),
            message,
        };
        let mut compiled = None;
        match &plan.spec {
            VerifierSpec::Regex { pattern, .. } => {
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(recap_plan::REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| err(format!("bad pattern `{pattern}`: {e}")))?;
                compiled = Some(re);
            }
            VerifierSpec::Numeric { tolerance, .. } => {
                if !(tolerance.is_finite() && *tolerance >= 0.0) {
                    return Err(err(format!(
                        "tolerances must be finite and >= 0 (abs_tol = {tolerance}, rel_tol = 0)"
                    )));
                }
            }
            VerifierSpec::Choice { options, .. } => {
                if options.is_empty() || !options.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(err(format!(
                        "letters must be upper-case ASCII letters, got `{options}`"
                    )));
                }
                let class = regex::escape(options);
                compiled = Some(
                    Regex::new(&format!("[{class}]"))
                        .map_err(|e| err(format!("letters `{options}`: {e}")))?,
                );
            }
            VerifierSpec::Iou {
                threshold: Some(t), ..
            } => {
                if !(0.0..=1.0).contains(t) {
                    return Err(err(format!("threshold must be in [0, 1], got {t}")));
                }
            }
            VerifierSpec::Iou { .. }
            | VerifierSpec::Exact { .. }
            | VerifierSpec::MathEqual { .. }
            | VerifierSpec::LengthPenalty { .. } => {}
            // External graders score whole batches (`engine::graders`), never one sample.
            VerifierSpec::Exec { .. } | VerifierSpec::Http { .. } => {
                return Err(err("an external grader is built by engine::graders".into()));
            }
        }
        Ok(Verifier {
            plan: plan.clone(),
            compiled,
        })
    }

    /// The plan's verifier this was built from.
    pub fn plan(&self) -> &recap_plan::Verifier {
        &self.plan
    }

    /// The completion's text the judgement reads: the extractor chain's result, or the whole
    /// completion when the verifier has no chain; `None` when the chain finds nothing.
    fn extracted(&self, sample: &Sample) -> Option<String> {
        let extract = match &self.plan.spec {
            VerifierSpec::Regex { extract, .. }
            | VerifierSpec::Exact { extract, .. }
            | VerifierSpec::Numeric { extract, .. }
            | VerifierSpec::MathEqual { extract, .. }
            | VerifierSpec::Choice { extract, .. }
            | VerifierSpec::Iou { extract, .. }
            | VerifierSpec::Exec { extract, .. }
            | VerifierSpec::Http { extract, .. } => extract,
            VerifierSpec::LengthPenalty { .. } => return Some(sample.completion.to_string()),
        };
        if extract.steps.is_empty() {
            Some(sample.completion.to_string())
        } else {
            apply_extractor(extract, Some(sample.fields), sample.completion)
        }
    }

    fn judge(&self, sample: &Sample) -> Outcome {
        let Some(text) = self.extracted(sample) else {
            return Outcome::Score(0.0);
        };
        match &self.plan.spec {
            VerifierSpec::Regex { .. } => {
                let re = self.compiled.as_ref().expect("regex compiled in new()");
                // Python's `re`, which reward functions in the literature use, lets `$` match
                // before one final newline; Rust's `$` matches only at the end. Trying the
                // text without that newline as well gives Python's answer. A pattern that
                // names the absolute end (`\z`) asks for no such leeway.
                let before_newline = text
                    .strip_suffix('\n')
                    .filter(|_| !re.as_str().contains("\\z"));
                Outcome::from_bool(
                    re.is_match(&text) || before_newline.is_some_and(|t| re.is_match(t)),
                )
            }
            VerifierSpec::Exact {
                expected,
                ignore_case,
                ..
            } => {
                let reference = match reference_text(sample, &expected.field) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let norm = |s: &str| {
                    let s = s.trim();
                    if *ignore_case {
                        s.to_lowercase()
                    } else {
                        s.to_string()
                    }
                };
                Outcome::from_bool(norm(&text) == norm(&reference))
            }
            VerifierSpec::Numeric {
                expected,
                extract,
                tolerance,
            } => {
                let expected = expected.field.as_str();
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let Some(want) = parse_single_number(&reference) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not a number: `{}`",
                        excerpt(&reference)
                    ));
                };
                // Without an extractor the last number of the completion counts; an extractor
                // has already picked the number, so what is left must start with it.
                let got = if extract.steps.is_empty() {
                    find_numbers(&text).pop()
                } else {
                    leading_number(&text)
                };
                let close = |g: &FoundNumber| {
                    let wants = want.readings();
                    g.readings()
                        .iter()
                        .any(|g| wants.iter().any(|w| (g - w).abs() <= *tolerance))
                };
                Outcome::from_bool(got.as_ref().is_some_and(close))
            }
            VerifierSpec::MathEqual { expected, .. } => {
                let expected = expected.field.as_str();
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                if reference.trim().is_empty() {
                    return Outcome::NotApplicable(format!("field `{expected}` is empty"));
                }
                Outcome::from_bool(math_equal(&text, &reference, MATH_REL_TOL))
            }
            VerifierSpec::Choice {
                expected, options, ..
            } => {
                let (expected, letters) = (expected.field.as_str(), options.as_str());
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let Some(want) = single_letter(&reference, letters) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not one of the letters {letters}: `{}`",
                        excerpt(&reference)
                    ));
                };
                Outcome::from_bool(extract_choice(&text, letters) == Some(want))
            }
            VerifierSpec::Iou {
                expected,
                threshold,
                ..
            } => {
                let expected = expected.field.as_str();
                let Some(value) = sample.fields.get(expected).filter(|v| !v.is_null()) else {
                    return Outcome::NotApplicable(format!("sample has no field `{expected}`"));
                };
                let want = match value {
                    Value::Array(items) => {
                        let nums: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
                        nums.filter(|n| n.len() == 4)
                            .map(|n| [n[0], n[1], n[2], n[3]])
                    }
                    Value::String(s) => last_box(s),
                    _ => None,
                };
                let Some(want) = want.filter(valid_box) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not a box [x1, y1, x2, y2] with x1 < x2, y1 < y2: {}",
                        excerpt(&value.to_string())
                    ));
                };
                let iou = last_box(&text).map_or(0.0, |got| box_iou(&got, &want));
                match threshold {
                    Some(t) => Outcome::from_bool(iou >= *t),
                    None => Outcome::Score(iou),
                }
            }
            VerifierSpec::LengthPenalty { max_tokens, target } => {
                let Some(len) = sample.completion_tokens else {
                    return Outcome::NotApplicable(
                        "the completion's token count is unknown".to_string(),
                    );
                };
                // The stdlib's length_penalty is 1 up to `target` and falls to 0 at
                // `max_tokens`: DAPO's 0 .. -1 penalty shifted by one. A target at or past
                // `max_tokens` (which the checker warns of: recap::validate::penalty_target)
                // becomes a step at `target`, its limit moved to `target + 1`.
                let target = target.unwrap_or(0) as usize;
                let limit = (*max_tokens as usize).max(target + 1);
                Outcome::Score(1.0 + overlong_penalty(len, target, limit))
            }
            VerifierSpec::Exec { .. } | VerifierSpec::Http { .. } => Outcome::NotApplicable(
                "an external grader scores batches, not one completion".to_string(),
            ),
        }
    }
}

impl Verify for Verifier {
    fn name(&self) -> &str {
        &self.plan.name
    }

    fn verify(&self, sample: &Sample) -> Outcome {
        self.judge(sample)
    }
}

/// DAPO's soft overlong punishment: 0 up to `target`, linear down to -1 at `limit`.
fn overlong_penalty(len: usize, target: usize, limit: usize) -> f64 {
    if len <= target {
        0.0
    } else if len >= limit {
        -1.0
    } else {
        (target as f64 - len as f64) / (limit - target) as f64
    }
}

/// The reference answer as text, or the `NotApplicable` outcome saying why there is none.
fn reference_text(sample: &Sample, field: &str) -> Result<String, Outcome> {
    match sample.fields.get(field) {
        None | Some(Value::Null) => Err(Outcome::NotApplicable(format!(
            "sample has no field `{field}`"
        ))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Err(Outcome::NotApplicable(format!(
            "field `{field}` is not a string or number: {}",
            excerpt(&other.to_string())
        ))),
    }
}

/// At most 80 characters of `s`, for messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A number found in text: its byte span, its value, its text (thousands commas dropped,
/// fractions as `n/d`, a mixed number as its decimal value, a percentage with its `%`) and
/// whether it was written as a percentage.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundNumber {
    pub start: usize,
    pub end: usize,
    pub value: f64,
    pub text: String,
    pub percent: bool,
}

impl FoundNumber {
    /// The values the number may stand for: a percentage is both `x` and `x/100`, because
    /// "50%" answers both "what percentage" and "what fraction" (as in math_verify).
    pub fn readings(&self) -> Vec<f64> {
        if self.percent {
            vec![self.value, self.value / 100.0]
        } else {
            vec![self.value]
        }
    }
}

/// The integer a text starts with, after whitespace: the pattern TRL's arithmetic accuracy
/// reward matches, so `leading_integer` reads what the peer reads.
fn leading_integer_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^\s*-?[0-9]+").expect("leading integer pattern is valid"))
}

fn number_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let plain = r"(?:\d+(?:\.\d+)?|\.\d+)";
        let full = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?";
        Regex::new(&format!(
            r"(?P<sign>[-+\x{{2212}}])?(?:(?P<whole>\d+)?\\[dt]?frac(?:\{{\s*(?P<fn>[-\x{{2212}}]?{plain})\s*\}}|(?P<fn1>\d))(?:\{{\s*(?P<fd>{plain})\s*\}}|(?P<fd1>\d))|(?P<num>{full})(?:/(?P<den>\d+(?:\.\d+)?))?)(?P<pct>\s?\\?%)?"
        ))
        .expect("number pattern is valid")
    })
}

/// Every number in `text`, in order. Thousands commas (`1,234`) are part of a number, and so
/// are E notation (`1e3`), fractions (`3/4`, `\frac{3}{4}`), mixed numbers (`3\frac{1}{2}` is
/// 3.5) and a percent sign (`50%`, `50\%`). A sign (`-`, `+` or the Unicode minus U+2212)
/// counts only when it does not follow a letter, digit or closing bracket (so `3-5` is 3 and 5).
pub fn find_numbers(text: &str) -> Vec<FoundNumber> {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|&c| c != ',' && c != '+')
            .map(|c| if c == '\u{2212}' { '-' } else { c })
            .collect()
    };
    let mut out = Vec::new();
    for caps in number_regex().captures_iter(text) {
        let m = caps.get(0).expect("group 0 exists");
        let mut start = m.start();
        let mut negative = false;
        if let Some(sign) = caps.name("sign") {
            let prev = text[..start].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || matches!(c, ')' | ']' | '}')) {
                start = sign.end();
            } else {
                negative = sign.as_str() != "+";
            }
        }
        let group = |names: [&str; 2]| names.iter().find_map(|n| caps.name(n));
        let parsed = if let Some(num) = caps.name("num") {
            let n: Option<f64> = clean(num.as_str()).parse().ok();
            match caps.name("den") {
                Some(den) => n.zip(den.as_str().parse::<f64>().ok()).and_then(|(n, d)| {
                    let text = format!("{}/{}", clean(num.as_str()), den.as_str());
                    (d != 0.0).then_some((n / d, text))
                }),
                None => n.map(|n| (n, clean(num.as_str()))),
            }
        } else {
            let (Some(n), Some(den)) = (group(["fn", "fn1"]), group(["fd", "fd1"])) else {
                continue;
            };
            let n_text = clean(n.as_str());
            let inner_negative = n_text.starts_with('-');
            let n_abs = n_text.trim_start_matches('-');
            let fraction = n_abs
                .parse::<f64>()
                .ok()
                .zip(den.as_str().parse::<f64>().ok())
                .filter(|(_, d)| *d != 0.0);
            fraction.map(|(n, d)| match caps.name("whole") {
                // A mixed number: its text is its value, which reads back as one number.
                Some(whole) => {
                    let w: f64 = whole.as_str().parse().unwrap_or(f64::NAN);
                    let v = if inner_negative { w - n / d } else { w + n / d };
                    (v, v.to_string())
                }
                None => {
                    let v = if inner_negative { -n / d } else { n / d };
                    let sign = if inner_negative { "-" } else { "" };
                    (v, format!("{sign}{n_abs}/{}", den.as_str()))
                }
            })
        };
        let Some((magnitude, body)) = parsed else {
            continue;
        };
        let (value, mut text_out) = if negative {
            let body = body
                .strip_prefix('-')
                .map_or(format!("-{body}"), str::to_string);
            (-magnitude, body)
        } else {
            (magnitude, body)
        };
        let percent = caps.name("pct").is_some();
        if percent {
            text_out.push('%');
        }
        if value.is_finite() {
            out.push(FoundNumber {
                start,
                end: m.end(),
                value,
                text: text_out,
                percent,
            });
        }
    }
    out
}

/// The number `text` starts with (after whitespace), if any.
pub fn leading_number(text: &str) -> Option<FoundNumber> {
    let trimmed = text.trim_start();
    let offset = text.len() - trimmed.len();
    find_numbers(text)
        .into_iter()
        .next()
        .filter(|n| n.start == offset || (n.start == offset + 1 && trimmed.starts_with('+')))
}

/// A reference that should be exactly one number (`"1,234"`, `"-3.5"`, `" 42 "`, `"$18"`,
/// `"50%"`, `"7."`, `"3/4"`, `"\frac{3}{4}"`).
fn parse_single_number(s: &str) -> Option<FoundNumber> {
    let core = s.trim().trim_matches('$').trim_end_matches('.').trim();
    match find_numbers(core).as_slice() {
        [n] if n.start == 0 && n.end == core.len() => Some(n.clone()),
        _ => None,
    }
}

/// The content of the last `\boxed{...}` or `\fbox{...}` in `text`, with balanced braces.
pub fn last_boxed(text: &str) -> Option<&str> {
    let at = text
        .rfind("\\boxed{")
        .map(|i| i + 7)
        .or_else(|| text.rfind("\\fbox{").map(|i| i + 6))?;
    let mut depth = 1usize;
    for (i, c) in text[at..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[at..at + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The upper-case letter a reference like `B`, `(b)`, `B.` names, if it is one of `letters`.
fn single_letter(s: &str, letters: &str) -> Option<char> {
    let core: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && !"()[]{}.:*$\\".contains(*c))
        .collect();
    let mut chars = core.chars();
    let c = chars.next()?.to_ascii_uppercase();
    (chars.next().is_none() && letters.contains(c)).then_some(c)
}

/// The option letter a completion chose, trying the forms from most to least explicit:
/// the whole answer is a letter; "answer is (B)" / "Answer: B" / "Answer: b" (the last such;
/// a lower-case letter counts there when a bracket, punctuation or the end follows it, so
/// "the answer is a number" names no option); "(B)"; a line starting "B." or "B)"; the last
/// stand-alone capital letter, as the RECAP authors' code does.
pub fn extract_choice(text: &str, letters: &str) -> Option<char> {
    if let Some(c) = single_letter(text, letters) {
        return Some(c);
    }
    static FORMS: OnceLock<[Regex; 4]> = OnceLock::new();
    let forms = FORMS.get_or_init(|| {
        [
            Regex::new(
                r"(?i:answer)\s*(?i:is)?\s*[:\-]?\s*(?i:option)?\s*[\(\[]?\s*(?:([A-Z])\b|([a-z])(?:[\)\]]|\s*[.,;!]?\s*$))",
            )
            .expect("valid"),
            Regex::new(r"\(([A-Za-z])\)").expect("valid"),
            Regex::new(r"(?m)^\s*\**([A-Z])\**\s*[.):]").expect("valid"),
            Regex::new(r"\b([A-Z])\b").expect("valid"),
        ]
    });
    let pick = |caps: regex::Captures| -> Option<char> {
        let m = caps.get(1).or_else(|| caps.get(2))?;
        m.as_str().chars().next().map(|c| c.to_ascii_uppercase())
    };
    let valid = |c: &char| letters.contains(*c);
    if let Some(c) = forms[0]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .last()
    {
        return Some(c);
    }
    if let Some(c) = forms[1]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .last()
    {
        return Some(c);
    }
    if let Some(c) = forms[2].captures_iter(text).filter_map(pick).find(valid) {
        return Some(c);
    }
    forms[3]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .last()
}

/// The last `[x1, y1, x2, y2]` box in `text`.
pub fn last_box(text: &str) -> Option<[f64; 4]> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        let n = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*";
        Regex::new(&format!(r"\[{n},{n},{n},{n}\]")).expect("valid")
    });
    let caps = re.captures_iter(text).last()?;
    let mut b = [0.0; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = caps.get(i + 1)?.as_str().parse().ok()?;
    }
    b.iter().all(|v: &f64| v.is_finite()).then_some(b)
}

fn valid_box(b: &[f64; 4]) -> bool {
    b.iter().all(|v| v.is_finite()) && b[0] < b[2] && b[1] < b[3]
}

/// Intersection over union of two boxes; a degenerate or inverted predicted box scores 0.
pub fn box_iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let area = |x: &[f64; 4]| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Running verifiers over a batch.

/// A verifier call that panicked, with enough of the sample to find it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierFailure {
    pub verifier: String,
    pub sample: String,
    pub completion: String,
    pub message: String,
}

impl fmt::Display for VerifierFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verifier `{}` panicked on sample {} (completion `{}`): {}",
            self.verifier, self.sample, self.completion, self.message
        )
    }
}

/// Calls one verifier on one sample, catching a panic. A non-finite score is turned into
/// `NotApplicable`, because it would poison every mean downstream.
pub fn verify_caught(verifier: &dyn Verify, sample: &Sample) -> Result<Outcome, VerifierFailure> {
    match catch_unwind(AssertUnwindSafe(|| verifier.verify(sample))) {
        Ok(Outcome::Score(s)) if !s.is_finite() => Ok(Outcome::NotApplicable(format!(
            "verifier `{}` gave a non-finite score {s}",
            verifier.name()
        ))),
        Ok(outcome) => Ok(outcome),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-text payload".to_string());
            Err(VerifierFailure {
                verifier: verifier.name().to_string(),
                sample: sample.id.to_string(),
                completion: excerpt(sample.completion),
                message,
            })
        }
    }
}

/// The outcomes of a set of verifiers on a batch: `outcomes[sample][verifier]`. A call that
/// panicked is `NotApplicable` in the table and listed in `failures`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreTable {
    pub outcomes: Vec<Vec<Outcome>>,
    pub failures: Vec<VerifierFailure>,
}

pub fn score_batch(verifiers: &[&dyn Verify], samples: &[Sample]) -> ScoreTable {
    let mut failures = Vec::new();
    let outcomes = samples
        .iter()
        .map(|sample| {
            verifiers
                .iter()
                .map(|v| match verify_caught(*v, sample) {
                    Ok(o) => o,
                    Err(failure) => {
                        let reason = failure.to_string();
                        failures.push(failure);
                        Outcome::NotApplicable(reason)
                    }
                })
                .collect()
        })
        .collect();
    ScoreTable { outcomes, failures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recap_plan::Expected;
    use serde_json::json;

    fn fields(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn build(spec: VerifierSpec) -> Verifier {
        Verifier::new(&recap_plan::Verifier {
            name: "v".into(),
            spec,
        })
        .unwrap()
    }

    fn answer() -> Expected {
        Expected {
            field: "answer".into(),
        }
    }

    fn steps(steps: Vec<ExtractStep>) -> Extractor {
        Extractor { steps }
    }

    fn numeric(extract: Vec<ExtractStep>, tolerance: f64) -> VerifierSpec {
        VerifierSpec::Numeric {
            expected: answer(),
            extract: steps(extract),
            tolerance,
        }
    }

    fn choice(options: &str) -> VerifierSpec {
        VerifierSpec::Choice {
            expected: answer(),
            extract: steps(vec![]),
            options: options.into(),
        }
    }

    fn iou(threshold: Option<f64>) -> VerifierSpec {
        VerifierSpec::Iou {
            expected: answer(),
            extract: steps(vec![]),
            threshold,
        }
    }

    fn run(v: &Verifier, completion: &str, f: &serde_json::Map<String, Value>) -> Outcome {
        v.verify(&Sample {
            id: "t:0",
            prompt: "",
            completion,
            fields: f,
            completion_tokens: None,
        })
    }

    /// Checks (completion, reference, expected score) rows against one verifier.
    fn table(v: &Verifier, rows: &[(&str, Value, f64)]) {
        for (completion, reference, want) in rows {
            let f = fields(json!({ "answer": reference }));
            assert_eq!(
                run(v, completion, &f),
                Outcome::Score(*want),
                "{:?} on `{completion}` vs {reference}",
                v.plan().spec
            );
        }
    }

    #[test]
    fn extractor_steps_and_chains() {
        let on = |chain: Vec<ExtractStep>, text: &str| apply_extractor(&steps(chain), None, text);
        let tag = || ExtractStep::Tag {
            name: "answer".into(),
        };
        assert_eq!(
            on(vec![tag()], "x <answer> 42 </answer>").as_deref(),
            Some("42")
        );
        assert_eq!(
            on(vec![tag()], "<answer>1</answer> then <answer>2</answer>").as_deref(),
            Some("2")
        );
        assert_eq!(on(vec![tag()], "<answer>unclosed"), None);
        assert_eq!(on(vec![tag()], "no tags"), None);
        let after = || ExtractStep::After {
            marker: "####".into(),
        };
        assert_eq!(on(vec![after()], "so 3+4=7\n#### 7").as_deref(), Some("7"));
        assert_eq!(on(vec![after()], "no marker"), None);
        let text = "1,234 apples and -5.5 pears";
        assert_eq!(
            on(vec![ExtractStep::LastNumber], text).as_deref(),
            Some("-5.5")
        );
        assert_eq!(
            on(vec![ExtractStep::FirstNumber], text).as_deref(),
            Some("1234")
        );
        assert_eq!(on(vec![ExtractStep::LastNumber], "none"), None);
        // The peer's pattern: digits at the start only, a minus sign kept, a decimal cut.
        let lead = |text: &str| on(vec![ExtractStep::LeadingInteger], text);
        assert_eq!(lead("  -12.5 and 3").as_deref(), Some("-12"));
        assert_eq!(lead("122").as_deref(), Some("122"));
        assert_eq!(lead("x 122"), None);
        assert_eq!(lead("+5"), None);
        let chain = || vec![tag(), ExtractStep::LastNumber];
        assert_eq!(
            on(chain(), "<answer>The total is $1,250.</answer>").as_deref(),
            Some("1250")
        );
        assert_eq!(on(chain(), "<answer>none</answer>"), None);
        assert_eq!(on(vec![], "as is").as_deref(), Some("as is"));
    }

    #[test]
    fn numbers_in_text() {
        let vals = |s: &str| find_numbers(s).iter().map(|n| n.value).collect::<Vec<_>>();
        assert_eq!(vals("3-5"), vec![3.0, 5.0]);
        assert_eq!(vals("x is -3 and +2"), vec![-3.0, 2.0]);
        assert_eq!(vals("1,234,567.5 or 12,34"), vec![1234567.5, 12.0, 34.0]);
        assert_eq!(vals(".5 and 1e3"), vec![0.5, 1000.0]);
        // Fractions, mixed numbers, percentages and the Unicode minus are single numbers.
        assert_eq!(vals("3/4 and \u{2212}2"), vec![0.75, -2.0]);
        assert_eq!(vals(r"$3\frac{1}{2}$ or $-\frac{1}{4}$"), vec![3.5, -0.25]);
        assert_eq!(vals(r"\dfrac12 then 2\frac{x}{3}"), vec![0.5, 2.0, 3.0]);
        let texts = |s: &str| {
            find_numbers(s)
                .into_iter()
                .map(|n| n.text)
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(r"50% or 7\% of \frac{-1}{3}"), ["50%", "7%", "-1/3"]);
        // A fraction over zero is no number at all.
        assert!(texts("1/0 apples").is_empty());
        let lead = |s: &str| leading_number(s).map(|n| n.value);
        assert_eq!(lead("  122abc"), Some(122.0));
        assert_eq!(lead("-7 apples"), Some(-7.0));
        assert_eq!(leading_number("abc 122"), None);
        assert_eq!(
            last_boxed(r"so \boxed{\frac{1}{2}} done"),
            Some(r"\frac{1}{2}")
        );
    }

    #[test]
    fn regex_matches_anywhere() {
        let regex = |pattern: &str| VerifierSpec::Regex {
            pattern: pattern.into(),
            extract: steps(vec![]),
        };
        let partial = build(regex("<answer>.*</answer>"));
        let f = fields(json!({}));
        assert_eq!(
            run(&partial, "so <answer>1</answer>", &f),
            Outcome::Score(1.0)
        );
        assert_eq!(run(&partial, "no answer", &f), Outcome::Score(0.0));
        // The design's format reward: anchored in the pattern itself, dot matches newlines.
        let fmt = build(regex("(?s)^<answer>.*</answer>$"));
        assert_eq!(run(&fmt, "<answer>\n7\n</answer>", &f), Outcome::Score(1.0));
        assert_eq!(
            run(&fmt, "<answer>7</answer> extra", &f),
            Outcome::Score(0.0)
        );
        // `$` accepts one trailing newline, as in Python's `re`, but not two.
        assert_eq!(run(&fmt, "<answer>7</answer>\n", &f), Outcome::Score(1.0));
        assert_eq!(run(&fmt, "<answer>7</answer>\n\n", &f), Outcome::Score(0.0));
        let absolute = build(regex(r"7\z"));
        assert_eq!(run(&absolute, "7\n", &f), Outcome::Score(0.0));
        let bad = Verifier::new(&recap_plan::Verifier {
            name: "bad".into(),
            spec: regex("(unclosed"),
        })
        .unwrap_err();
        assert!(bad.to_string().contains("verifier `bad`"), "{bad}");
    }

    #[test]
    fn exact_trims_and_may_ignore_case() {
        let exact = |ignore_case| VerifierSpec::Exact {
            expected: answer(),
            extract: steps(vec![]),
            ignore_case,
        };
        let plain = build(exact(false));
        table(
            &plain,
            &[
                ("Paris", json!("Paris"), 1.0),
                ("  Paris \n", json!("Paris"), 1.0),
                ("paris", json!("Paris"), 0.0),
                ("Paris, France", json!("Paris"), 0.0),
                ("42", json!(42), 1.0),
            ],
        );
        let loose = build(exact(true));
        table(
            &loose,
            &[
                ("new YORK ", json!("New York"), 1.0),
                ("new   york", json!("New York"), 0.0),
            ],
        );
        // Missing, null and structured references are not applicable, never a silent 0.
        for f in [json!({}), json!({"answer": null}), json!({"answer": [1]})] {
            assert!(matches!(
                run(&plain, "x", &fields(f)),
                Outcome::NotApplicable(_)
            ));
        }
    }

    #[test]
    fn numeric_table() {
        let last = build(numeric(vec![], 1e-6));
        table(
            &last,
            &[
                ("The answer is 72", json!("72"), 1.0),
                ("so 3 + 4 = 7", json!(7), 1.0),
                ("costs $1,250 total", json!("1250"), 1.0),
                ("costs 1250", json!("1,250"), 1.0),
                ("it is -3", json!("-3"), 1.0),
                ("it is 3", json!("-3"), 0.0),
                ("0.5", json!("0.50"), 1.0),
                ("7 then 8", json!("7"), 0.0),
                ("no number", json!("7"), 0.0),
                ("12.0000001", json!("12"), 1.0),
                ("12.001", json!("12"), 0.0),
                ("it costs 18 dollars", json!("$18"), 1.0),
                ("so 7", json!("7."), 1.0),
                ("+4", json!("+4"), 1.0),
                ("it is \u{2212}3", json!("-3"), 1.0),
                ("it is \u{2212}3", json!("3"), 0.0),
                ("The discount is 50%", json!("0.5"), 1.0),
                ("The discount is 0.5", json!("50%"), 1.0),
                ("The share is 3/4", json!(r"\frac{3}{4}"), 1.0),
                (r"It takes $3\frac{1}{2}$ hours", json!("3.5"), 1.0),
                (r"It takes $3\frac{1}{2}$ hours", json!("2"), 0.0),
            ],
        );
        // With an extractor, what it leaves must start with the number.
        let leading = build(numeric(vec![ExtractStep::Trim], 1e-6));
        table(
            &leading,
            &[
                ("122 is the sum", json!("122"), 1.0),
                ("sum 122", json!("122"), 0.0),
                ("-5", json!("-5"), 1.0),
                ("1225", json!("122"), 0.0),
            ],
        );
        let first = build(numeric(vec![ExtractStep::FirstNumber], 1e-6));
        table(
            &first,
            &[
                ("a 7 then 8", json!("7"), 1.0),
                ("a 8 then 7", json!("7"), 0.0),
            ],
        );
        let tol = build(numeric(vec![], 0.5));
        table(&tol, &[("3.4", json!(3), 1.0), ("3.6", json!(3), 0.0)]);
        // A reference that is not a single number is not applicable.
        for r in [json!("seven"), json!("3 or 4"), json!(true)] {
            let out = run(&last, "3", &fields(json!({ "answer": r })));
            assert!(matches!(out, Outcome::NotApplicable(_)), "{r}: {out:?}");
        }
        for tolerance in [-1.0, f64::NAN] {
            assert!(Verifier::new(&recap_plan::Verifier {
                name: "n".into(),
                spec: numeric(vec![], tolerance),
            })
            .is_err());
        }
    }

    #[test]
    fn math_equal_table() {
        let v = build(VerifierSpec::MathEqual {
            expected: answer(),
            extract: steps(vec![]),
        });
        table(
            &v,
            &[
                ("42", json!("42"), 1.0),
                ("42.0", json!(42), 1.0),
                ("0.5", json!(r"\frac{1}{2}"), 1.0),
                (r"\dfrac{3}{4}", json!("0.75"), 1.0),
                (r"\tfrac12", json!("1/2"), 1.0),
                (r"The answer is \boxed{\frac{2}{4}}.", json!("0.5"), 1.0),
                (r"$\frac{-1}{3}$", json!(r"-\frac{1}{3}"), 1.0),
                ("50%", json!("0.5"), 1.0),
                (r"50\%", json!("50"), 1.0),
                ("x = 12", json!("12"), 1.0),
                ("1,000,000", json!("1000000"), 1.0),
                (r"\$18", json!("18"), 1.0),
                ("90^\\circ", json!("90"), 1.0),
                (r"2\sqrt{2}", json!(r"\sqrt{8}"), 1.0),
                (r"\sqrt{4}", json!("2"), 1.0),
                ("5 cm", json!("5"), 1.0),
                ("(1+2)*3", json!("9"), 1.0),
                ("2^{10}", json!("1024"), 1.0),
                (r"\left( \frac{1}{2} \right)", json!("0.5"), 1.0),
                (r"\text{(B)}", json!("(B)"), 1.0),
                // Negative cases.
                ("0.333", json!(r"\frac{1}{3}"), 0.0),
                ("43", json!("42"), 0.0),
                ("-0.5", json!(r"\frac{1}{2}"), 0.0),
                ("51%", json!("0.5"), 0.0),
                (r"\frac{1}{0}", json!("1"), 0.0),
                ("", json!("1"), 0.0),
                ("x", json!("y"), 0.0),
                ("{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}", json!("1"), 0.0),
            ],
        );
        assert!(matches!(
            run(&v, "1", &fields(json!({"answer": "  "}))),
            Outcome::NotApplicable(_)
        ));
    }

    #[test]
    fn choice_table() {
        let v = build(choice("ABCDEFGH"));
        table(
            &v,
            &[
                ("B", json!("B"), 1.0),
                ("(B)", json!("B"), 1.0),
                ("B.", json!("(B)"), 1.0),
                ("b", json!("B"), 1.0),
                ("The answer is (C).", json!("C"), 1.0),
                ("Answer: D", json!("D"), 1.0),
                ("answer: (e)", json!("E"), 1.0),
                ("I first thought A, but the answer is B", json!("B"), 1.0),
                ("Looking at the options, (H) fits.", json!("H"), 1.0),
                ("C. Because the sum is even.", json!("C"), 1.0),
                ("I pick G here", json!("G"), 1.0),
                ("Answer: b", json!("B"), 1.0),
                ("the answer is c.", json!("C"), 1.0),
                // Several stand-alone letters: the last, as the RECAP authors' code reads it.
                ("A good guess is D", json!("D"), 1.0),
                // Negative cases.
                ("The answer is (C).", json!("B"), 0.0),
                ("A cat or B", json!("A"), 0.0),
                ("the answer is a number", json!("A"), 0.0),
                ("(Z)", json!("A"), 0.0),
                ("nothing here", json!("A"), 0.0),
            ],
        );
        let four = build(choice("ABCD"));
        table(&four, &[("E", json!("A"), 0.0)]);
        assert!(matches!(
            run(&four, "E", &fields(json!({"answer": "E"}))),
            Outcome::NotApplicable(_)
        ));
        assert!(matches!(
            run(&v, "B", &fields(json!({"answer": "Bob"}))),
            Outcome::NotApplicable(_)
        ));
        for bad in ["", "abc"] {
            assert!(Verifier::new(&recap_plan::Verifier {
                name: "c".into(),
                spec: choice(bad),
            })
            .is_err());
        }
    }

    #[test]
    fn iou_table() {
        let v = build(iou(None));
        let b = json!([0, 0, 10, 10]);
        table(
            &v,
            &[
                ("[0, 0, 10, 10]", b.clone(), 1.0),
                // Half overlap: intersection 50, union 150.
                (r#"{"bbox_2d": [5,0,15,10]}"#, b.clone(), 50.0 / 150.0),
                ("[20,20,30,30]", b.clone(), 0.0),
                ("no box", b.clone(), 0.0),
                ("[10,10,0,0]", b.clone(), 0.0),
                ("first [0,0,10,10] then [0,0,5,10]", b.clone(), 0.5),
                ("[0.0, 0.0, 10.0, 10.0]", json!("[0,0,10,10]"), 1.0),
            ],
        );
        let t = build(iou(Some(0.5)));
        table(
            &t,
            &[
                ("[0,0,5,10]", b.clone(), 1.0),
                ("[5,0,15,10]", b.clone(), 0.0),
            ],
        );
        for bad in [
            json!([0, 0, 10]),
            json!([5, 5, 1, 1]),
            json!("box"),
            json!(3),
        ] {
            assert!(matches!(
                run(&v, "[0,0,1,1]", &fields(json!({ "answer": bad }))),
                Outcome::NotApplicable(_)
            ));
        }
        assert!(Verifier::new(&recap_plan::Verifier {
            name: "iou".into(),
            spec: iou(Some(1.5)),
        })
        .is_err());
    }

    /// The stdlib's length_penalty: 1 up to `target` tokens, falling linearly to 0 at
    /// `max_tokens` (DAPO's overlong shaping shifted by one).
    #[test]
    fn length_penalty_is_shifted_dapo_overlong_shaping() {
        let f = fields(json!({}));
        let at = |v: &Verifier, tokens| {
            v.verify(&Sample {
                id: "t",
                prompt: "",
                completion: "x",
                fields: &f,
                completion_tokens: Some(tokens),
            })
        };
        let v = build(VerifierSpec::LengthPenalty {
            max_tokens: 20,
            target: Some(10),
        });
        assert!(matches!(run(&v, "x", &f), Outcome::NotApplicable(_)));
        assert_eq!(at(&v, 4), Outcome::Score(1.0));
        assert_eq!(at(&v, 15), Outcome::Score(0.5));
        assert_eq!(at(&v, 25), Outcome::Score(0.0));
        // Without a target the fall starts at 0 tokens.
        let from_zero = build(VerifierSpec::LengthPenalty {
            max_tokens: 8,
            target: None,
        });
        assert_eq!(at(&from_zero, 2), Outcome::Score(0.75));
        // A target at or past `max_tokens` is a step at the target.
        let step = build(VerifierSpec::LengthPenalty {
            max_tokens: 5,
            target: Some(5),
        });
        assert_eq!(at(&step, 5), Outcome::Score(1.0));
        assert_eq!(at(&step, 6), Outcome::Score(0.0));
    }

    #[test]
    fn extraction_failure_scores_zero_but_missing_reference_is_not_applicable() {
        let v = build(numeric(
            vec![ExtractStep::Tag {
                name: "answer".into(),
            }],
            1e-6,
        ));
        let f = fields(json!({"answer": "7"}));
        assert_eq!(run(&v, "<answer>7</answer>", &f), Outcome::Score(1.0));
        assert_eq!(run(&v, "7", &f), Outcome::Score(0.0));
        assert!(matches!(
            run(&v, "<answer>7</answer>", &fields(json!({"question": "?"}))),
            Outcome::NotApplicable(r) if r.contains("`answer`")
        ));
    }

    struct Panicky;
    impl Verify for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        fn verify(&self, sample: &Sample) -> Outcome {
            if sample.completion.contains("boom") {
                panic!("cannot parse {}", sample.completion);
            }
            Outcome::Score(f64::NAN)
        }
    }

    #[test]
    fn a_panic_is_caught_and_reported_with_the_sample() {
        let exact = build(VerifierSpec::Exact {
            expected: answer(),
            extract: steps(vec![]),
            ignore_case: false,
        });
        let f = fields(json!({"answer": "ok"}));
        let samples: Vec<Sample> = ["ok", "boom!"]
            .iter()
            .enumerate()
            .map(|(i, c)| Sample {
                id: if i == 0 { "src:1" } else { "src:2" },
                prompt: "p",
                completion: c,
                fields: &f,
                completion_tokens: None,
            })
            .collect();
        let verifiers: [&dyn Verify; 2] = [&exact, &Panicky];
        let table = score_batch(&verifiers, &samples);
        assert_eq!(table.outcomes[0][0], Outcome::Score(1.0));
        // A non-finite score is refused rather than passed on.
        assert!(
            matches!(&table.outcomes[0][1], Outcome::NotApplicable(r) if r.contains("non-finite"))
        );
        assert_eq!(table.outcomes[1][0], Outcome::Score(0.0));
        assert!(
            matches!(&table.outcomes[1][1], Outcome::NotApplicable(r) if r.contains("panicked"))
        );
        assert_eq!(table.failures.len(), 1);
        let failure = &table.failures[0];
        assert_eq!(failure.verifier, "panicky");
        assert_eq!(failure.sample, "src:2");
        assert_eq!(failure.completion, "boom!");
        assert!(failure.message.contains("cannot parse boom!"));
    }

    /// Random strings built from the tokens the parsers care about must never panic.
    #[test]
    fn verifiers_never_panic_on_garbage() {
        let pieces = [
            "1",
            "0",
            "9",
            "170141183460469231731687303715884105727",
            "999999999999999999999999999999999999",
            ".",
            ",",
            "-",
            "+",
            "*",
            "/",
            "^",
            "%",
            "(",
            ")",
            "{",
            "}",
            "[",
            "]",
            "\\frac",
            "\\sqrt",
            "\\boxed{",
            "$",
            "=",
            "<answer>",
            "</answer>",
            "####",
            "B",
            "a",
            "é",
            "答",
            " ",
            "\n",
            "e5",
            "\\pi",
            "answer is",
            "(C)",
            "D.",
            "\\left(",
            "{,}",
            "\\%",
            "°",
        ];
        let specs = [
            numeric(vec![ExtractStep::Trim], 1e-6),
            VerifierSpec::MathEqual {
                expected: answer(),
                extract: steps(vec![]),
            },
            choice("ABCDEFGH"),
            iou(None),
            VerifierSpec::Exact {
                expected: answer(),
                extract: steps(vec![
                    ExtractStep::Tag {
                        name: "answer".into(),
                    },
                    ExtractStep::After {
                        marker: "####".into(),
                    },
                    ExtractStep::LastNumber,
                ]),
                ignore_case: true,
            },
        ];
        let verifiers: Vec<Verifier> = specs.into_iter().map(build).collect();
        let mut rng = crate::train::rng::HostRng::new(1);
        let text = |rng: &mut crate::train::rng::HostRng| {
            let n = rng.below(24) as usize;
            (0..n)
                .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                .collect::<String>()
        };
        for _ in 0..3000 {
            let completion = text(&mut rng);
            let reference = text(&mut rng);
            let f = fields(json!({ "answer": reference }));
            for v in &verifiers {
                let sample = Sample {
                    id: "fuzz",
                    prompt: "",
                    completion: &completion,
                    fields: &f,
                    completion_tokens: None,
                };
                verify_caught(v, &sample).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
