//! The DHT simulation benchmark of issue 3: lookups in an in-process network of 10,000 and
//! 100,000 nodes after 20% churn, with the real routing-table and lookup code
//! (`kith_transport::dht::sim`). Writes its table into BENCHMARKS.md.
//!
//! `cargo bench -p kith-transport --bench dht_sim` runs both sizes; `KITH_DHT_SIM_SIZES=2000,10000`
//! picks others (the file is only written for the default sizes).

use kith_bench::{verdict, write_section};
use std::time::Instant;

use kith_transport::dht::sim::{SimConfig, SimReport, Simulation};

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Row {
    report: SimReport,
    fresh: usize,
    peak_mib: Option<f64>,
}

fn main() {
    let (sizes, write): (Vec<usize>, bool) = match std::env::var("KITH_DHT_SIM_SIZES") {
        Ok(list) => (
            list.split(',')
                .map(|s| s.trim().parse().expect("size"))
                .collect(),
            false,
        ),
        Err(_) => (vec![10_000, 100_000], true),
    };
    let mut rows = Vec::new();
    for &nodes in &sizes {
        let mut config = SimConfig::new(nodes);
        // After the churn, 5% fresh nodes join the damaged network (they must route around the
        // dead too), and lookups may start from or target them.
        config.fresh_after_churn = 0.05;
        let fresh = (nodes as f64 * config.fresh_after_churn).round() as usize;
        let started = Instant::now();
        let report = Simulation::run(config);
        let peak_mib = peak_rss_mib();
        println!(
            "{nodes} nodes: success {:.2}%, k-closest {:.2}% (recall {:.2}%), hops median {} p90 {}, queries median {} p90 {}, \
             bootstrap {:.1}s, lookups {:.2}s, total {:.1}s, mean table {:.0}, peak rss {:?} MiB",
            100.0 * report.success_rate(),
            100.0 * report.k_closest_rate(),
            100.0 * report.k_closest_recall(20),
            report.hops_quantile(0.5),
            report.hops_quantile(0.9),
            report.queries_quantile(0.5),
            report.queries_quantile(0.9),
            report.bootstrap_time.as_secs_f64(),
            report.lookup_time.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            report.mean_table_len,
            peak_mib,
        );
        rows.push(Row {
            report,
            fresh,
            peak_mib,
        });
    }
    if write {
        write_section("transport-dht", &render(&rows));
    }
}

fn render(rows: &[Row]) -> String {
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut out = format!(
        "Measured {date} by `cargo bench -p kith-transport --bench dht_sim` (release, one thread, \
         in-process virtual network: real routing tables and lookups, no sockets; k = 20, alpha = 3; \
         each node joins via 3 random bootstrap nodes + a self-lookup + a lookup into every bucket not \
         yet full; then 20% of the nodes vanish silently, 5% fresh nodes join, and 1,000 lookups run \
         from random live nodes for the ids of random live nodes, with no refresh in between).\n\n\
         | nodes (live) | success: target found | exact k closest found | k closest recall | hops median | hops p90 | queries/lookup median (p90) | failed queries/lookup | join phase s | 1,000 lookups s | peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for row in rows {
        let r = &row.report;
        out += &format!(
            "| {} ({}) | {:.1}% | {:.1}% | {:.1}% | {} | {} | {} ({}) | {:.1} | {:.1} | {:.2} | {} |\n",
            r.joined - row.fresh,
            r.live,
            100.0 * r.success_rate(),
            100.0 * r.k_closest_rate(),
            100.0 * r.k_closest_recall(20),
            r.hops_quantile(0.5),
            r.hops_quantile(0.9),
            r.queries_quantile(0.5),
            r.queries_quantile(0.9),
            r.failed_queries as f64 / r.lookups.max(1) as f64,
            r.bootstrap_time.as_secs_f64(),
            r.lookup_time.as_secs_f64(),
            row.peak_mib.map_or("?".into(), |m| format!("{m:.0}")),
        );
    }
    out += "\n*Hops* is the depth of the path to the closest node that answered (the target itself when \
            found): seeds from the looking node's own table are 1 hop away, a node learnt from a node \
            at depth d is at d + 1. It is the number of sequential request rounds the lookup needs with \
            unlimited parallelism, not the number of messages (that is the queries column; a lookup \
            continues until its 20 closest live candidates have all answered). A query to a vanished \
            node stands for a timeout. Peak RSS is the process's high-water mark after that size ran \
            (sizes run in increasing order).\n";
    if let Some(big) = rows.iter().find(|r| r.report.joined - r.fresh == 100_000) {
        let r = &big.report;
        let median = r.hops_quantile(0.5);
        let success = 100.0 * r.success_rate();
        out += &format!(
            "\nTargets at 100,000 nodes with 20% churn: median hops ≤ 6 — {median} ({}); success ≥ 99% — {success:.1}% ({}).\n",
            verdict(median <= 6),
            verdict(success >= 99.0),
        );
    }
    out
}
