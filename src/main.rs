// candle returns and re-zeroes large buffers on every op; glibc's allocator
// makes that cost half the CPU time (shared/engineering-notes.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    longclip::cli::main_entry()
}
