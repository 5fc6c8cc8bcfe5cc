//! A progress bar on standard error for long scans, only when it is a terminal; plain when `NO_COLOR` is set.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting progress bar, hidden when standard error is not a terminal.
pub struct Progress(ProgressBar);

impl Progress {
    pub fn bytes(message: &'static str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(ProgressBar::hidden());
        }
        let plain = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let template = if plain {
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})"
        } else {
            "{msg} [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({eta})"
        };
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
        bar.set_message(message);
        Progress(bar)
    }

    pub fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
