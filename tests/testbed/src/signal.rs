//! Ctrl-C and SIGTERM for the demo and the benchmark: one place installs the handlers, and each
//! handler makes only async-signal-safe calls.

use std::sync::atomic::{AtomicBool, Ordering};

/// What SIGINT and SIGTERM do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSignal {
    /// Set a flag that `interrupted()` reads: the program stops at its next step and cleans up
    /// through its guards.
    SetFlag,
    /// End the whole process group (every process the program started is in it) and exit 130
    /// at once: what is left behind is removed by the next run.
    EndProcessGroup,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn set_flag(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

extern "C" fn end_process_group(_: libc::c_int) {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::kill(0, libc::SIGTERM);
        libc::_exit(130);
    }
}

/// Installs `action` for SIGINT and SIGTERM.
pub fn on_signal(action: OnSignal) {
    let handler: extern "C" fn(libc::c_int) = match action {
        OnSignal::SetFlag => set_flag,
        OnSignal::EndProcessGroup => end_process_group,
    };
    // SAFETY: both handlers make async-signal-safe calls only (an atomic store; signal, kill,
    // _exit).
    unsafe {
        libc::signal(libc::SIGINT, handler as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since `on_signal(OnSignal::SetFlag)`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
