//! Progress of long `plan`/`sync` runs (hundreds of manifests under the Admin API's rate
//! limit): a bar on stderr when stderr is a terminal, nothing otherwise (CI logs, pipes, files).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Draws only when stderr is a terminal and `enabled`; `NO_PROGRESS` or `CI` set hide it too.
    pub fn on_terminal(enabled: bool) -> Self {
        let wanted = enabled
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_PROGRESS").is_none()
            && std::env::var_os("CI").is_none();
        if !wanted {
            return Progress::default();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    /// Starts a phase of `len` steps (`reading`, `applying`, `status`).
    pub fn phase(&self, name: &'static str, len: usize) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(len as u64);
            bar.set_position(0);
            bar.set_message(name);
        }
    }

    pub fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Removes the bar (before the results are printed).
    pub fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_disabled_or_not_a_terminal() {
        // Test runs capture stderr (never a terminal): no bar either way.
        assert!(!Progress::on_terminal(false).is_drawn());
        if !std::io::stderr().is_terminal() {
            assert!(!Progress::on_terminal(true).is_drawn());
        }
        let p = Progress::default();
        p.phase("reading", 3);
        p.step();
        p.done();
    }
}
