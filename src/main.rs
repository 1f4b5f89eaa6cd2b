// candle returns and re-zeroes large buffers on every op; glibc's allocator
// makes that cost half the CPU time (shared/engineering-notes.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3
/// headers; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Keep freed pages: a batch frees and re-allocates the same large
    // activation buffers every layer, and each return to the OS costs a
    // page fault and a kernel page clear when they come back (docs/cpu.md).
    // The process's memory stays at its peak, as with PyTorch's allocator.
    // MIMALLOC_PURGE_DELAY, when set, still decides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    longclip::cli::main_entry()
}
