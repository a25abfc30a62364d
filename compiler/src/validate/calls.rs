//! Validate's rules about single stdlib calls: model shapes that do not divide, and verifier
//! settings the runtime would refuse or that do not do what they seem to.

use super::problems::ValidateProblem;
use super::{arg_span, V};
use crate::ast::DeclKind;
use crate::diagnostic::Problem;
use crate::typecheck::{CallVal, Value};

impl V<'_, '_, '_, '_> {
    /// A `tiny` model's `hidden` must divide by its `heads`, and its `heads` by its `kv_heads`.
    pub(super) fn model_shapes(&mut self) {
        let models: Vec<_> = self.decls(DeclKind::Model).collect();
        for id in models {
            let Some(c) = self.typed.call(id) else {
                continue;
            };
            if c.name() != "tiny" {
                continue;
            }
            let (h, heads, kv) = (c.int("hidden"), c.int("heads"), c.int("kv_heads"));
            if let (Some(h), Some(heads)) = (h, heads) {
                if heads > 0 && h % heads != 0 {
                    let problem = ValidateProblem::HiddenNotDivisible { hidden: h, heads };
                    self.diags.push(problem.at(
                        arg_span(c, "hidden"),
                        format!("{h} is not a multiple of {heads}"),
                    ));
                }
            }
            if let (Some(heads), Some(kv)) = (heads, kv) {
                if kv > 0 && heads % kv != 0 {
                    let problem = ValidateProblem::HeadsNotDivisible {
                        heads,
                        kv_heads: kv,
                    };
                    self.diags.push(problem.at(
                        arg_span(c, "kv_heads"),
                        format!("{heads} is not a multiple of {kv}"),
                    ));
                }
            }
        }
    }

    /// Settings of verifiers that the runtime would refuse when it builds them, after the
    /// models are loaded (a regular expression that does not compile, option letters that are
    /// not letters), and a length penalty whose target is not below its limit, which runs but
    /// is a step rather than a slope (a warning). Every call in every value is visited, so
    /// inline verifiers (`rewards = [regex("...")]`) are checked too.
    pub(super) fn verifier_settings(&mut self) {
        self.regex_patterns();
        for c in std::mem::take(&mut self.calls.choice) {
            self.choice_options(c);
        }
        for c in std::mem::take(&mut self.calls.length_penalty) {
            self.penalty_target(c);
        }
        for c in std::mem::take(&mut self.calls.exec) {
            self.exec_command(c);
        }
        for c in std::mem::take(&mut self.calls.http) {
            self.http_url(c);
        }
    }

    /// An `exec` verifier's command must name a program; the runtime could start nothing.
    fn exec_command(&mut self, c: &CallVal) {
        let Some(Value::List(items)) = c.get("command").map(|v| &v.v) else {
            return;
        };
        let program = items.first().map(|i| match &i.v {
            Value::Str { text, .. } => text.trim().is_empty(),
            _ => false,
        });
        if program.unwrap_or(true) {
            let at = items.first().map_or(arg_span(c, "command"), |i| i.span);
            self.diags
                .push(ValidateProblem::EmptyCommand.at(at, "no program to run"));
        }
    }

    /// An `http` verifier's url must be one the runtime's HTTP client can reach.
    fn http_url(&mut self, c: &CallVal) {
        let Some(url) = c.str("url") else {
            return;
        };
        let why = match url.split_once("://") {
            Some(("http" | "https", rest)) if rest.is_empty() || rest.starts_with('/') => {
                Some("names no host")
            }
            Some(("http" | "https", _)) => None,
            _ => Some("does not start with `http://` or `https://`"),
        };
        if let Some(why) = why {
            let problem = ValidateProblem::BadUrl { url, why };
            self.diags.push(problem.at(arg_span(c, "url"), why));
        }
    }

    /// A `regex` verifier's pattern must compile as the runtime compiles it.
    fn regex_patterns(&mut self) {
        // Compiling a pattern is the costly part, and a large pipeline repeats its few
        // patterns across thousands of verifiers: each distinct one is compiled once.
        let mut verdicts: foldhash::HashMap<&str, Option<String>> = Default::default();
        for c in std::mem::take(&mut self.calls.regex) {
            let Some(pattern) = c.str("pattern") else {
                continue;
            };
            let why = verdicts
                .entry(pattern)
                .or_insert_with(|| regex_error(pattern));
            if let Some(why) = why {
                let problem = ValidateProblem::BadRegex { why };
                self.diags
                    .push(problem.at(arg_span(c, "pattern"), why.as_str()));
            }
        }
    }

    /// A `choice` verifier's option letters: the runtime looks for upper-case ASCII letters.
    fn choice_options(&mut self, c: &CallVal) {
        let Some(options) = c.str("options") else {
            return;
        };
        if options.is_empty() || !options.chars().all(|ch| ch.is_ascii_uppercase()) {
            let problem = ValidateProblem::BadOptions { options };
            self.diags
                .push(problem.at(arg_span(c, "options"), "not upper-case letters"));
        }
    }

    /// A `length_penalty` whose target is not below its limit. The runtime moves the limit
    /// past the target rather than refuse, so the reward becomes a step; likely not what was
    /// meant, but it runs, so a warning.
    fn penalty_target(&mut self, c: &CallVal) {
        let (Some(target), Some(max_tokens)) = (c.int("target"), c.int("max_tokens")) else {
            return;
        };
        if target >= max_tokens {
            let problem = ValidateProblem::PenaltyTarget { target, max_tokens };
            self.diags.push(
                problem
                    .at(arg_span(c, "target"), format!("not below {max_tokens}"))
                    .label(arg_span(c, "max_tokens"), "where the reward was to reach 0"),
            );
        }
    }
}

/// Why the runtime's regex verifier would refuse `pattern`, or `None` when it compiles. The
/// same builder and size limit as the runtime, so the checker accepts exactly what the run will.
fn regex_error(pattern: &str) -> Option<String> {
    let e = regex::RegexBuilder::new(pattern)
        .size_limit(recap_plan::REGEX_SIZE_LIMIT)
        .build()
        .err()?;
    Some(match &e {
        regex::Error::CompiledTooBig(limit) => format!(
            "it compiles to more than the {} MiB the runtime allows",
            limit >> 20
        ),
        // A syntax error's text draws the pattern with a caret; its last line says what is
        // wrong.
        other => other
            .to_string()
            .lines()
            .last()
            .map(|l| l.trim_start_matches("error: ").to_string())
            .unwrap_or_default(),
    })
}
