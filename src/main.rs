//! The `recapc` binary: parses the command line and hands it to the library, then exits with
//! the documented code (0 clean, 1 diagnostics with errors, 2 usage or IO, 3 a run failed).

use clap::Parser;

fn main() {
    // Training allocates and frees the same large activation buffers every step; without this,
    // glibc returns them to the kernel each time and the step pays page faults (a third of the
    // backward pass on the benchmark fixture). Must run before any worker thread exists.
    recap_runtime::alloc::tune_allocator();
    // candle's barrier pool makes callers spin while its workers wake; on a small machine that
    // starves the threads doing real work. A user's own setting wins.
    recap_runtime::alloc::tune_threads();
    let cli = recapc::Cli::parse();
    let code = recapc::commands::run(cli);
    std::process::exit(code.as_i32());
}
