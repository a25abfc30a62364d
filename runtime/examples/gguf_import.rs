//! Converts a GGUF file into a Hugging Face directory: `gguf_import FILE OUT_DIR`. The same as
//! `recapc import gguf FILE --out DIR`, for use before the CLI command exists and in scripts
//! that build only the runtime crate. Prints the import summary.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, out] = args.as_slice() else {
        eprintln!("usage: gguf_import FILE.gguf OUT_DIR");
        return ExitCode::from(2);
    };
    let start = std::time::Instant::now();
    match recap_runtime::gguf::import(file, out) {
        Ok(s) => {
            println!("{s} in {:.1} s", start.elapsed().as_secs_f64());
            for f in &s.files {
                println!("  wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
