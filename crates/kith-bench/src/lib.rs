//! Helpers shared by every Kith benchmark (a dev-dependency only): each benchmark owns one
//! section of `BENCHMARKS.md`, between `<!-- NAME:start -->` and `<!-- NAME:end -->`, and rewrites
//! it with the figures it just measured.

use std::path::{Path, PathBuf};

/// `BENCHMARKS.md` at the workspace root.
pub fn benchmarks_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md")
}

/// Today's date (UTC) as `YYYY-MM-DD`, for the "measured on" line.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPU time this process has used so far, all threads together (user and system).
pub fn process_cpu() -> std::time::Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("the process CPU clock");
    std::time::Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// "met" or "NOT met", for target lines.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Replaces the section `name` of `text` with `body`, appending the section if it is missing.
pub fn replace_section(text: &str, name: &str, body: &str) -> String {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let block = format!("{start}\n{body}{end}");
    match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{block}{}", &text[..s], &text[e + end.len()..]),
        _ => format!("{text}\n{block}\n"),
    }
}

/// Rewrites the section `name` of `BENCHMARKS.md` with `body`.
pub fn write_section(name: &str, body: &str) {
    let path = benchmarks_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&path, replace_section(&text, name, body))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn replaces_only_its_own_section() {
        let text = "# B\n<!-- a:start -->\nold a\n<!-- a:end -->\n<!-- b:start -->\nold b\n<!-- b:end -->\n";
        let out = replace_section(text, "a", "new a\n");
        assert!(out.contains("new a\n<!-- a:end -->"));
        assert!(out.contains("old b"));
        assert!(!out.contains("old a"));
        let appended = replace_section("# B\n", "c", "c body\n");
        assert!(appended.ends_with("<!-- c:start -->\nc body\n<!-- c:end -->\n"));
    }
}
