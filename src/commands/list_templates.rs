//! `recapc templates`: takes nothing, gives the names and descriptions of the templates that
//! `recapc new --template NAME` accepts.

use super::write_stdout;
use crate::exit::ExitCode;
use crate::templates::TEMPLATES;

pub fn run() -> ExitCode {
    let width = TEMPLATES.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in TEMPLATES {
        out.push_str(&format!("{:width$}  {}\n", t.name, t.description()));
    }
    write_stdout(&out)
}
