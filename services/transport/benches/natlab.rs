//! Time-to-direct across the NAT lab's matrix (`tests/natlab`): for every pair of presets, the
//! dialler connects through the relay and both nodes punch; the figure is the time from the
//! start of `connect` until *both* nodes route each other directly. Two network conditions,
//! applied to every datagram the two hosts send (the lab's UDP shim; tc netem is not available):
//! 5 ms delay with 1% loss, and 40 ms delay with 3% loss. Medians over several runs per pair.
//!
//! Run (root, as the lab needs): `cargo bench -p kith-transport --bench natlab`
//! (`KITH_NATLAB_RUNS` sets the runs per pair and condition, default 5). Writes its tables into
//! BENCHMARKS.md.

#[path = "../tests/natlab/mod.rs"]
mod natlab;

use std::time::Duration;

use kith_bench::{today, verdict, write_section};
use kith_transport::net::Impairment;
use natlab::Nat;
use natlab::pair::{direct_expected, run_pair};

const PRESETS: [Nat; 4] = [
    Nat::None,
    Nat::FullCone,
    Nat::PortRestricted,
    Nat::Symmetric,
];

fn name(nat: Nat) -> &'static str {
    match nat {
        Nat::None => "no NAT",
        Nat::FullCone => "full cone",
        Nat::PortRestricted => "port restricted",
        Nat::Symmetric => "symmetric",
        Nat::PortRestrictedRace => "port restricted, conntrack race",
    }
}

fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort();
    values.get(values.len() / 2).copied()
}

struct Cell {
    direct: Vec<Duration>,
    first_data: Vec<Duration>,
    runs: usize,
}

fn measure(a: Nat, b: Nat, impairment: Impairment, runs: usize) -> Cell {
    let wait = if direct_expected(a, b) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(4)
    };
    let mut cell = Cell {
        direct: Vec::new(),
        first_data: Vec::new(),
        runs,
    };
    for _ in 0..runs {
        let outcome = run_pair(a, b, impairment, wait).expect("lab run");
        cell.first_data.push(outcome.time_to_first_data);
        if let Some(time) = outcome.time_to_direct {
            cell.direct.push(time);
        }
    }
    cell
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runs: usize = std::env::var("KITH_NATLAB_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let conditions = [
        (
            "5 ms delay, 1% loss",
            Impairment {
                delay: Duration::from_millis(5),
                loss: 0.01,
            },
        ),
        (
            "40 ms delay, 3% loss",
            Impairment {
                delay: Duration::from_millis(40),
                loss: 0.03,
            },
        ),
    ];
    let mut out = format!(
        "## Transport: time-to-direct in the NAT lab\n\n\
         Measured {} (`cargo bench -p kith-transport --bench natlab`, {runs} runs per pair and \
         condition, medians). Hosts and routers in Linux network namespaces with nftables NAT \
         (see ARCHITECTURE.md, the NAT lab); the dialler (rows) connects to the other host \
         (columns) through a relay on the internet and both punch. Each cell: median time from \
         the start of `connect` until **both** nodes route each other directly · runs that went \
         direct / runs · median time to the first echoed 64 KiB (through whichever path). The \
         delay and loss apply to every datagram each host sends (so a round trip between the \
         hosts carries twice the delay).\n",
        today()
    );
    let mut worst_possible = Duration::ZERO;
    let mut all_possible_direct = true;
    for (label, impairment) in conditions {
        out += &format!("\n### {label}\n\n| dialler \\ peer |");
        for b in PRESETS {
            out += &format!(" {} |", name(b));
        }
        out += "\n|---|";
        for _ in PRESETS {
            out += "---|";
        }
        out += "\n";
        let mut cell_text = |a: Nat, b: Nat| {
            eprintln!("{label}: {a:?} x {b:?}");
            let cell = measure(a, b, impairment, runs);
            let direct = cell.direct.len();
            let text = match median(cell.direct.clone()) {
                Some(time) => {
                    if direct_expected(a, b) {
                        worst_possible = worst_possible.max(time);
                    }
                    ms(time)
                }
                None => "relayed".into(),
            };
            if direct_expected(a, b) && direct < cell.runs {
                all_possible_direct = false;
            }
            let first = median(cell.first_data).map_or("?".into(), ms);
            format!(" {text} · {direct}/{} · {first} |", cell.runs)
        };
        for a in PRESETS {
            out += &format!("| **{}** |", name(a));
            for b in PRESETS {
                out += &cell_text(a, b);
            }
            out += "\n";
        }
        out += "\nThe conntrack race (a router that accepts unsolicited packets to itself, so a \
                peer's early packet gets a confirmed conntrack entry):\n\n| pair | result |\n|---|---|\n";
        for (a, b) in [
            (Nat::PortRestrictedRace, Nat::PortRestricted),
            (Nat::PortRestricted, Nat::PortRestrictedRace),
            (Nat::PortRestrictedRace, Nat::PortRestrictedRace),
        ] {
            out += &format!("| {} × {} |", name(a), name(b));
            out += &cell_text(a, b);
            out += "\n";
        }
    }
    out += &format!(
        "\nSymmetric against symmetric stays relayed: both ports are random, and the issue allows \
         it. Symmetric against port restricted goes direct by the birthday strategy: the \
         symmetric side opens 256 extra sockets primed towards the peer, the other side sprays \
         1024 random ports per round (hyperdht's anchor: up to ~35 s; libp2p DCUtR and iroh do \
         not attempt it).\n\n\
         Target: time-to-direct under 2 s wherever direct is possible (the anchors' harnesses \
         allow 15 s): worst median {} — {}; every such run went direct — {}.\n",
        ms(worst_possible),
        verdict(worst_possible < Duration::from_secs(2)),
        verdict(all_possible_direct),
    );
    print!("{out}");
    write_section("transport-natlab", &out);
}
