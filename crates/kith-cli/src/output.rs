//! Printing results: one JSON document with `--json`, readable lines otherwise.

use serde_json::Value;

/// Prints `value` as JSON, or `text` (already formatted) for people.
/// A closed stdout (`kith … | head`) is not an error: the rest of the output is dropped.
pub fn emit(json: bool, value: Value, text: impl FnOnce() -> String) {
    use std::io::Write as _;
    let out = if json {
        serde_json::to_string_pretty(&value).expect("json value serialises")
    } else {
        text()
    };
    if !out.is_empty() {
        let _ = writeln!(std::io::stdout(), "{out}");
    }
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise (logs,
/// tests). Nothing is printed for work that finishes within half a second on a terminal.
pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: std::time::Instant,
    terminal: bool,
    shown_tenths: u64,
    drawn: bool,
    quiet: bool,
}

impl Progress {
    /// `quiet` (e.g. `--json`) prints nothing.
    pub fn new(label: &'static str, total: u64, quiet: bool) -> Self {
        use std::io::IsTerminal as _;
        Progress {
            label,
            total,
            done: 0,
            started: std::time::Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            shown_tenths: 0,
            drawn: false,
            quiet,
        }
    }

    /// Sets how much is done (bytes).
    pub fn set(&mut self, done: u64) {
        self.done = done.min(self.total.max(done));
        if self.quiet {
            return;
        }
        let fraction = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        if self.terminal {
            if self.started.elapsed().as_millis() >= 500 || self.drawn {
                eprint!("\r{}", self.line(fraction));
                self.drawn = true;
            }
        } else {
            let tenths = (fraction * 10.0) as u64;
            if tenths > self.shown_tenths {
                self.shown_tenths = tenths;
                eprintln!("{}", self.line(fraction));
            }
        }
    }

    fn line(&self, fraction: f64) -> String {
        const WIDTH: usize = 30;
        let filled = ((fraction * WIDTH as f64) as usize).min(WIDTH);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} [{}{}] {:>3}% {:.1}/{:.1} MiB {:.1} MiB/s",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            (fraction * 100.0) as u64,
            self.done as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            self.done as f64 / 1048576.0 / secs
        )
    }

    /// Ends the bar (a newline after an in-place bar).
    pub fn finish(mut self) {
        let total = self.total.max(self.done);
        self.set(total);
        if self.drawn && !self.quiet {
            eprintln!();
        }
    }
}

/// Seconds since the epoch as RFC 3339-ish UTC text (no time-zone database needed).
pub fn time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
