//! The NAT lab: two hosts behind NAT routers, and public hosts, in Linux network namespaces.
//!
//! ```text
//!        relay 198.18.1.2          observer 198.18.2.2
//!              │ .1.0/24                 │ .2.0/24
//!              └────────┐     ┌──────────┘
//!                    [ internet ]  (a router namespace; no NAT, no filter)
//!              ┌────────┘     └──────────┐
//!              │ .10.0/24                │ .20.0/24
//!   wan 198.18.10.2 [ ra ]        [ rb ] wan 198.18.20.2
//!   lan 10.0.1.1    │                  │ lan 10.0.2.1
//!                   ha 10.0.1.2        hb 10.0.2.2
//! ```
//!
//! With [`Nat::None`] on a side its router only routes and its host is public: the LAN is
//! 198.18.11.0/24 (side a) or 198.18.21.0/24 (side b), host `.2`, router `.1`. The internet
//! namespace is a router, not a bridge, so a packet from ha to hb crosses three forwarding hops
//! (ra, internet, rb): a packet sent with TTL [`PRIMING_TTL`] passes ra (opening ha's mapping)
//! and dies in the internet before it reaches rb. All public addresses are in 198.18.0.0/15 (the
//! benchmarking range: not private in the `Ipv4Addr::is_private` sense). IPv4 only.
//!
//! The routers' netfilter rules (nftables, one `table ip natlab` per router) are in
//! [`Nat::ruleset`]; ARCHITECTURE.md explains each preset.
//!
//! Code runs inside a namespace without spawning a process: [`Lab::spawn_in`] starts an OS
//! thread, moves it into the namespace with `setns(CLONE_NEWNET)` and runs a future on a
//! current-thread tokio runtime there; every socket made on that thread (and on threads it
//! starts) lives in the namespace. Setting the lab up does spawn `ip` and `nft`.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2 and nftables; without them
//! [`Lab::new`] fails with an error that says so (tests fail, they do not skip). Namespaces are
//! named `natlab-<pid>-<n>-<node>`, so labs in parallel test processes do not collide; `Drop`
//! deletes them, and a new lab deletes those left by processes that no longer exist.
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// TTL for a "priming" packet from ha or hb: it passes the sender's router (opening the mapping)
/// and is dropped by the internet router before it reaches the peer's NAT.
pub const PRIMING_TTL: u32 = 2;

/// Where the namespaces' bind mounts live (`ip netns`).
const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "natlab-";

/// A NAT preset for one side's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// No NAT and no filter: the router only routes, the host has a public address.
    None,
    /// Endpoint-independent mapping and filtering ("full cone"): once the host has sent from a
    /// port, anyone may send to the mapped port.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering ("port restricted").
    PortRestricted,
    /// Endpoint-dependent mapping ("symmetric"): a new random port for every destination, and
    /// address-and-port-dependent filtering.
    Symmetric,
    /// [`Nat::PortRestricted`] on a router that accepts unsolicited packets to itself (no input
    /// filter), as a plain Linux box with masquerade does. An unsolicited packet from the peer
    /// then leaves a *confirmed* conntrack entry, so the host's later packet to that peer cannot
    /// have its own port and is mapped to another one: the conntrack race. The router answers
    /// such packets with ICMP port unreachable (ignored by unconnected UDP sockets without
    /// `IP_RECVERR`, which quinn-udp does not set).
    PortRestrictedRace,
}

impl Nat {
    /// Every preset, for matrices.
    pub const ALL: [Nat; 5] = [
        Nat::None,
        Nat::FullCone,
        Nat::PortRestricted,
        Nat::Symmetric,
        Nat::PortRestrictedRace,
    ];

    /// Whether the router translates addresses (the host has a private address).
    pub fn translates(self) -> bool {
        self != Nat::None
    }

    /// Whether the mapping is endpoint-independent (the same public port for every destination).
    pub fn is_endpoint_independent(self) -> bool {
        self != Nat::Symmetric
    }

    /// The nftables ruleset for a router with this preset (`None` has none). `lan` is the
    /// host's subnet, `host` its address, `wan` the router's public address.
    pub fn ruleset(self, lan: &str, host: Ipv4Addr, wan: Ipv4Addr) -> Option<String> {
        let (input_policy, snat_flags) = match self {
            Nat::None => return None,
            Nat::FullCone | Nat::PortRestricted => ("drop", ""),
            Nat::Symmetric => ("drop", " fully-random"),
            Nat::PortRestrictedRace => ("accept", ""),
        };
        let full_cone = self == Nat::FullCone;
        let mut rules = String::from("table ip natlab {\n");
        if full_cone {
            // The ports the host has sent from recently (refreshed by every outbound packet):
            // inbound packets to them are forwarded to the host, whoever sends them. Keyed on
            // the host's port, which is the mapped port because the SNAT preserves ports (it
            // would not only if two flows clashed on the same tuple, which one host with one
            // socket per port cannot cause).
            rules += "  set fullcone { type inet_service; flags dynamic,timeout; timeout 120s; }\n";
        }
        rules += &format!(
            "  chain input {{ type filter hook input priority filter; policy {input_policy};\n"
        );
        rules += "    ct state established,related accept\n";
        rules += "    iifname { \"lo\", \"lan\" } accept\n  }\n";
        rules += "  chain forward { type filter hook forward priority filter; policy drop;\n";
        if full_cone {
            rules += "    iifname \"lan\" oifname \"wan\" update @fullcone { udp sport }\n";
        }
        rules += "    ct state established,related accept\n";
        if full_cone {
            rules += "    ct status dnat accept\n";
        }
        rules += "    iifname \"lan\" oifname \"wan\" accept\n  }\n";
        if full_cone {
            rules +=
                "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n";
            rules += &format!("    iifname \"wan\" udp dport @fullcone dnat to {host}\n  }}\n");
        }
        rules +=
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n";
        rules += &format!("    oifname \"wan\" ip saddr {lan} snat to {wan}{snat_flags}\n  }}\n");
        rules += "}\n";
        Some(rules)
    }
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The internet router between all the others.
    Internet,
    /// A public host for a relay / bootstrap node (and first observer).
    Relay,
    /// A second public host, on another address, for mapping classification.
    Observer,
    /// Side a's router and host.
    Ra,
    Ha,
    /// Side b's router and host.
    Rb,
    Hb,
}

impl Node {
    pub const ALL: [Node; 7] = [
        Node::Internet,
        Node::Relay,
        Node::Observer,
        Node::Ra,
        Node::Ha,
        Node::Rb,
        Node::Hb,
    ];

    fn short(self) -> &'static str {
        match self {
            Node::Internet => "inet",
            Node::Relay => "relay",
            Node::Observer => "obs",
            Node::Ra => "ra",
            Node::Ha => "ha",
            Node::Rb => "rb",
            Node::Hb => "hb",
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One side's addresses.
#[derive(Clone, Copy, Debug)]
struct Side {
    nat: Nat,
    /// Router's public address.
    wan: Ipv4Addr,
    /// Router's LAN address (the host's gateway).
    gateway: Ipv4Addr,
    /// The host's address.
    host: Ipv4Addr,
    /// The LAN subnet, as a /24 prefix.
    lan_net: Ipv4Addr,
}

impl Side {
    fn new(nat: Nat, index: u8) -> Side {
        let wan_net = [198, 18, 10 * index, 0];
        let lan_net = if nat.translates() {
            Ipv4Addr::new(10, 0, index, 0)
        } else {
            Ipv4Addr::new(198, 18, 10 * index + 1, 0)
        };
        let [a, b, c, _] = lan_net.octets();
        Side {
            nat,
            wan: Ipv4Addr::new(wan_net[0], wan_net[1], wan_net[2], 2),
            gateway: Ipv4Addr::new(a, b, c, 1),
            host: Ipv4Addr::new(a, b, c, 2),
            lan_net,
        }
    }

    fn inet_side(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.wan.octets();
        Ipv4Addr::new(a, b, c, 1)
    }
}

const RELAY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const OBSERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static STALE: Once = Once::new();

/// A running lab. Dropping it stops the tasks started in it and deletes its namespaces.
pub struct Lab {
    prefix: String,
    a: Side,
    b: Side,
    created: Vec<Node>,
    tasks: Mutex<Vec<CancellationToken>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("a", &self.a.nat)
            .field("b", &self.b.nat)
            .finish()
    }
}

impl Lab {
    /// Builds the lab with preset `a` on ra and `b` on rb.
    pub fn new(a: Nat, b: Nat) -> Result<Lab> {
        preflight()?;
        STALE.call_once(remove_stale_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab {
            prefix: format!("{PREFIX}{}-{n}-", std::process::id()),
            a: Side::new(a, 1),
            b: Side::new(b, 2),
            created: Vec::new(),
            tasks: Mutex::new(Vec::new()),
        };
        // On error, Drop removes whatever was created.
        lab.build()
            .with_context(|| format!("building NAT lab {} ({a:?} × {b:?})", lab.prefix))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        for node in Node::ALL {
            run("ip", &["netns", "add", &self.ns(node)], None)?;
            self.created.push(node);
        }
        let inet = self.ns(Node::Internet);
        let mut batch = String::from("link set lo up\n");
        for (name, peer, peer_if) in [
            ("relay", Node::Relay, "eth0"),
            ("obs", Node::Observer, "eth0"),
            ("ra", Node::Ra, "wan"),
            ("rb", Node::Rb, "wan"),
        ] {
            batch += &format!(
                "link add {name} type veth peer name {peer_if} netns {}\n",
                self.ns(peer)
            );
        }
        batch += "addr add 198.18.1.1/24 dev relay\naddr add 198.18.2.1/24 dev obs\n";
        for (name, side) in [("ra", &self.a), ("rb", &self.b)] {
            batch += &format!("addr add {}/24 dev {name}\n", side.inet_side());
        }
        for name in ["relay", "obs", "ra", "rb"] {
            batch += &format!("link set {name} up\n");
        }
        for side in [&self.a, &self.b] {
            if !side.nat.translates() {
                batch += &format!("route add {}/24 via {}\n", side.lan_net, side.wan);
            }
        }
        run_batch(&inet, &batch)?;

        for (node, addr, gw) in [
            (Node::Relay, RELAY, Ipv4Addr::new(198, 18, 1, 1)),
            (Node::Observer, OBSERVER, Ipv4Addr::new(198, 18, 2, 1)),
        ] {
            run_batch(&self.ns(node), &host_batch(addr, gw))?;
        }
        for (router, host, side) in [(Node::Ra, Node::Ha, self.a), (Node::Rb, Node::Hb, self.b)] {
            let batch = format!(
                "link set lo up\n\
                 link add lan type veth peer name eth0 netns {host_ns}\n\
                 addr add {wan}/24 dev wan\n\
                 addr add {gw}/24 dev lan\n\
                 link set wan up\n\
                 link set lan up\n\
                 route add default via {inet}\n",
                host_ns = self.ns(host),
                wan = side.wan,
                gw = side.gateway,
                inet = side.inet_side(),
            );
            run_batch(&self.ns(router), &batch)?;
            run_batch(&self.ns(host), &host_batch(side.host, side.gateway))?;
            if let Some(rules) =
                side.nat
                    .ruleset(&format!("{}/24", side.lan_net), side.host, side.wan)
            {
                run(
                    "ip",
                    &["netns", "exec", &self.ns(router), "nft", "-f", "-"],
                    Some(&rules),
                )?;
            }
        }
        for router in [Node::Internet, Node::Ra, Node::Rb] {
            self.set_sysctl(router, "net/ipv4/ip_forward", "1")?;
        }
        Ok(())
    }

    /// The namespace's name (for `ip netns exec NAME …` when debugging).
    pub fn ns(&self, node: Node) -> String {
        format!("{}{}", self.prefix, node.short())
    }

    /// The preset on `node`'s side (`Ra`/`Ha` → a, `Rb`/`Hb` → b); `None` for public nodes.
    pub fn nat(&self, node: Node) -> Nat {
        match node {
            Node::Ra | Node::Ha => self.a.nat,
            Node::Rb | Node::Hb => self.b.nat,
            _ => Nat::None,
        }
    }

    /// The node's own address: a host's LAN (or public) address, a router's public (WAN)
    /// address, the relay's and observer's public addresses. The internet router has one per
    /// link; this is the one towards the relay.
    pub fn ip(&self, node: Node) -> Ipv4Addr {
        match node {
            Node::Internet => Ipv4Addr::new(198, 18, 1, 1),
            Node::Relay => RELAY,
            Node::Observer => OBSERVER,
            Node::Ra => self.a.wan,
            Node::Rb => self.b.wan,
            Node::Ha => self.a.host,
            Node::Hb => self.b.host,
        }
    }

    /// The address the internet sees `node`'s packets come from: for a host behind NAT its
    /// router's public address, otherwise [`Lab::ip`].
    pub fn public_ip(&self, node: Node) -> Ipv4Addr {
        match node {
            Node::Ha | Node::Hb if self.nat(node).translates() => {
                self.ip(if node == Node::Ha { Node::Ra } else { Node::Rb })
            }
            _ => self.ip(node),
        }
    }

    /// A router's LAN-side address (its host's gateway). Panics for other nodes.
    pub fn lan_ip(&self, router: Node) -> Ipv4Addr {
        match router {
            Node::Ra => self.a.gateway,
            Node::Rb => self.b.gateway,
            _ => panic!("{router} is not a NAT router"),
        }
    }

    /// Writes a sysctl (`path` under /proc/sys, e.g. `net/ipv4/ip_forward`) in `node`'s
    /// namespace, from a thread that entered it (net sysctls are per namespace).
    pub fn set_sysctl(&self, node: Node, path: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{path}");
        let value = value.to_owned();
        let ns = self.ns(node);
        std::thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            std::fs::write(&path, value).with_context(|| format!("writing {path} in {ns}"))
        })
        .join()
        .map_err(|_| anyhow!("sysctl thread panicked"))?
    }

    /// Runs a command in `node`'s namespace (`ip netns exec`), for inspection: e.g.
    /// `lab.exec(Node::Ra, &["nft", "list", "ruleset"])` or `["conntrack", "-L"]`. Returns stdout.
    pub fn exec(&self, node: Node, args: &[&str]) -> Result<String> {
        let ns = self.ns(node);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// Starts `f()` on a new thread inside `node`'s namespace, on a current-thread tokio
    /// runtime (so the future need not be `Send`). Sockets it makes live in the namespace.
    /// Dropping the handle (or the lab) cancels the future at its next await point.
    pub fn spawn_in<F, Fut>(&self, node: Node, f: F) -> NsTask<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let ns = self.ns(node);
        let cancel = CancellationToken::new();
        self.tasks.lock().unwrap().push(cancel.clone());
        let (tx, rx) = oneshot::channel();
        let token = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("natlab-{}", node.short()))
            .spawn(move || {
                let result = (|| {
                    enter(&ns)?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building the namespace's runtime")?;
                    runtime.block_on(async move {
                        tokio::select! {
                            output = f() => Ok(output),
                            () = token.cancelled() => Err(anyhow!("task in {ns} was stopped")),
                        }
                    })
                })();
                let _ = tx.send(result);
            })
            .expect("spawning a lab thread");
        NsTask {
            node,
            rx: Some(rx),
            thread: Some(thread),
            cancel,
        }
    }

    /// Runs `f()` in `node`'s namespace and waits for it (see [`Lab::spawn_in`]).
    pub async fn run_in<F, Fut>(&self, node: Node, f: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.spawn_in(node, f).join().await
    }

    /// [`Lab::run_in`] for synchronous callers (not from inside a tokio runtime).
    pub fn block_in<F, Fut>(&self, node: Node, f: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.spawn_in(node, f).join_blocking()
    }

    /// Starts a reflector on `node` at `port`: every datagram is answered with the sender's
    /// address as text (`"ip:port"`), from the same socket. A minimal STUN for tests; see
    /// [`observe`].
    pub fn spawn_reflector(&self, node: Node, port: u16) -> NsTask<()> {
        let addr = SocketAddr::from((self.ip(node), port));
        self.spawn_in(node, move || async move {
            let socket = tokio::net::UdpSocket::bind(addr)
                .await
                .expect("reflector bind");
            let mut buf = [0u8; 2048];
            loop {
                let (_, from) = socket.recv_from(&mut buf).await.expect("reflector recv");
                let _ = socket.send_to(from.to_string().as_bytes(), from).await;
            }
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for token in self.tasks.lock().unwrap().drain(..) {
            token.cancel();
        }
        for node in self.created.drain(..).rev() {
            let ns = format!("{}{}", self.prefix, node.short());
            delete_namespace(&ns);
        }
    }
}

/// A future running in a namespace (see [`Lab::spawn_in`]).
#[must_use = "dropping an NsTask stops it"]
pub struct NsTask<T> {
    node: Node,
    rx: Option<oneshot::Receiver<Result<T>>>,
    thread: Option<JoinHandle<()>>,
    cancel: CancellationToken,
}

impl<T> fmt::Debug for NsTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NsTask").field("node", &self.node).finish()
    }
}

impl<T> NsTask<T> {
    /// Cancels the future (dropped at its next await point); `join` then returns an error.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the output. A panic in the task is resumed here; entering the namespace
    /// failing, or [`NsTask::stop`], is an error.
    pub async fn join(mut self) -> Result<T> {
        let rx = self.rx.take().expect("joined once");
        let outcome = rx.await;
        self.finish(outcome)
    }

    /// [`NsTask::join`] for synchronous callers.
    pub fn join_blocking(mut self) -> Result<T> {
        let rx = self.rx.take().expect("joined once");
        let outcome = rx.blocking_recv();
        self.finish(outcome)
    }

    fn finish(&mut self, outcome: Result<Result<T>, oneshot::error::RecvError>) -> Result<T> {
        let thread = self.thread.take().expect("joined once");
        match outcome {
            Ok(result) => {
                let _ = thread.join();
                result
            }
            // The sender was dropped without sending: the thread panicked.
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => bail!("task in {} ended without a result", self.node),
            },
        }
    }
}

impl<T> Drop for NsTask<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Sends a one-byte probe from `socket` to the reflector at `reflector` and returns the address
/// the reflector saw (the socket's public mapping), retrying up to 10 times, 200 ms apart.
pub async fn observe(
    socket: &tokio::net::UdpSocket,
    reflector: SocketAddr,
) -> Result<SocketAddrV4> {
    let mut buf = [0u8; 256];
    for _ in 0..10 {
        socket.send_to(b"?", reflector).await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
        loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(received) => {
                    let (len, from) = received?;
                    if from == reflector {
                        let text = std::str::from_utf8(&buf[..len])?;
                        return text
                            .parse()
                            .with_context(|| format!("reflector said {text:?}"));
                    }
                }
            }
        }
    }
    bail!("no answer from reflector {reflector}")
}

/// Moves the calling thread into the named network namespace.
fn enter(ns: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))
}

fn host_batch(addr: Ipv4Addr, gateway: Ipv4Addr) -> String {
    format!(
        "link set lo up\naddr add {addr}/24 dev eth0\nlink set eth0 up\nroute add default via {gateway}\n"
    )
}

fn run_batch(ns: &str, batch: &str) -> Result<String> {
    run("ip", &["-n", ns, "-batch", "-"], Some(batch))
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default(),
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails, loudly, where the lab cannot run: it is test infrastructure that CI (root) must run.
fn preflight() -> Result<()> {
    let euid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if euid != 0 {
        bail!(
            "the NAT lab needs root (network namespaces, nftables); this process runs as uid \
             {euid}. CI runs as root; locally use `sudo -E cargo nextest run -p kith-transport`"
        );
    }
    for (program, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        run(program, &[arg], None).with_context(|| {
            format!("the NAT lab needs `{program}` (Debian package {package}; .ci/run installs it)")
        })?;
    }
    Ok(())
}

/// Deletes `natlab-<pid>-…` namespaces whose process is gone (a crashed or killed test run).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(&name);
        }
    }
}

/// Kills any process left in the namespace, then deletes it. Errors are ignored (best effort).
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns], None) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid], None);
        }
    }
    let _ = run("ip", &["netns", "del", ns], None);
}
pub mod pair;
