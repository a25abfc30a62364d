//! The wording of diagnostics for mistakes people make, one case each (the way PRQL keeps a
//! backlog of bad messages): the fixtures pin codes and spans; these pin what the message and
//! the help line say, so a message that once confused someone does not come back.

use recap_compiler::{check, AssumeFilesExist, CheckOptions, Severity};

const HEAD: &str = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\") { prompt = \"{q}\", answer = field(\"a\") }
verifier acc = numeric()
verifier fmt = regex(r\"^x\")
";

/// The first error of `HEAD` followed by `body` and a train setting: (message, help).
fn first_error(body: &str) -> (String, String) {
    let source = format!("{HEAD}{body}\ntrain {{ steps = 10 }}\n");
    let out = check(
        "m.recap",
        &source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    let d = out
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .unwrap_or_else(|| panic!("no error for {body}"));
    (d.message.clone(), d.help.clone().unwrap_or_default())
}

fn assert_says(body: &str, message: &str, help: &str) {
    let (m, h) = first_error(body);
    assert!(
        m.contains(message),
        "{body}\nmessage: {m}\nwanted: {message}"
    );
    assert!(h.contains(help), "{body}\nhelp: {h}\nwanted: {help}");
}

#[test]
fn a_version_like_number_is_named_as_such() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], temperature = 1.5.0 }",
        "`1.5.0` is not a number: it has more than one decimal point",
        "`\"1.5.0\"`",
    );
}

#[test]
fn a_missing_comma_is_suggested() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc fmt] }",
        "found `fmt`",
        "is a `,` missing?",
    );
}

#[test]
fn a_colon_for_an_equals_sign_is_named() {
    assert_says(
        "objective rl = grpo(math) { group: 8, rewards = [acc] }",
        "found `:`",
        "with `=` rather than `:`",
    );
}

#[test]
fn a_field_without_equals_sign_says_how_fields_are_written() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], group 8 }",
        "expected `=`",
        "`name = value`",
    );
}

#[test]
fn a_single_reward_is_put_in_a_list() {
    assert_says(
        "objective rl = grpo(math) { rewards = acc }",
        "expects list[Reward], found a verifier `acc`",
        "put it in a list: `[acc]`",
    );
    assert_says(
        "objective rl = grpo(math) { rewards = 0.5 * acc }",
        "found a reward combination",
        "put it in a list",
    );
}

#[test]
fn a_whole_float_keeps_its_decimal_point() {
    assert_says(
        "objective rl = grpo(math, rewards = [acc], group = 8.0)",
        "found the float 8.0",
        "write a whole number, e.g. 8",
    );
}
