//! Third-party parsers (mail-parser) read hostile bytes: [`quietly`] turns a panic in one into
//! `None` for the caller to count, and the hook [`install_panic_hook`] keeps such a panic's
//! message off the operator's screen. Everywhere else a panic is still a bug, printed as usual.
//!
//! Fuzz harnesses do not install the hook: libFuzzer's own aborts on any panic, so a panic in
//! a third-party parser is still a finding there.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; None when it panicked.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let before = QUIET.with(|q| q.replace(true));
    // The state `f` touches is its own (a parser on a byte slice): nothing is left half-done.
    let out = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(before));
    out.ok()
}

/// The default panic hook, silent inside [`quietly`].
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(Cell::get) {
            default(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_none_and_the_flag_is_restored() {
        assert_eq!(quietly(|| 7), Some(7));
        let r: Option<()> = quietly(|| panic!("third-party bug"));
        assert_eq!(r, None);
        assert!(!QUIET.with(Cell::get));
        // Nested: the inner call leaves the outer one quiet.
        let outer = quietly(|| {
            let _ = quietly(|| 1);
            QUIET.with(Cell::get)
        });
        assert_eq!(outer, Some(true));
    }
}
