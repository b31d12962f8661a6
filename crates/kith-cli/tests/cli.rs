//! End-to-end tests of the `kith` binary, driven as a user would: real processes, real files,
//! real sockets.

mod common;

use std::path::{Path, PathBuf};

use common::*;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Every file under `dir` with its bytes, to prove a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "sock") {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_show_sign_and_independent_verification() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let init = kith(&home, &["--json", "init", "--name", "laptop"]).json();
    for field in [
        "id",
        "identity_public_key",
        "device_public_key",
        "derivation_path",
        "mnemonic",
    ] {
        assert!(init[field].is_string(), "missing {field}: {init}");
    }
    let words = init["mnemonic"].as_str().unwrap();
    assert_eq!(words.split_whitespace().count(), 24);
    // Secrets rest only encrypted: neither the words nor any three consecutive of them appear in
    // any file of the home.
    let first_three: Vec<&str> = words.split_whitespace().take(3).collect();
    for (path, bytes) in snapshot(&home) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(words), "{}", path.display());
        assert!(!text.contains(&first_three.join(" ")), "{}", path.display());
    }
    assert_eq!(init["derivation_path"], "m/5484'/0'/0'");
    let show = kith(&home, &["--json", "id", "show"]).json();
    assert_eq!(show["identity_public_key"], init["identity_public_key"]);
    assert_eq!(show["id"], init["id"]);
    assert_eq!(show["holds_identity_secret"], true);

    // Sign a file; check the signature with ed25519-dalek directly over `signed_bytes`, and that
    // `signed_bytes` binds the context and the message.
    let file = dir.path().join("message.txt");
    std::fs::write(&file, b"meet at noon").unwrap();
    let signed = kith(
        &home,
        &[
            "--json",
            "id",
            "sign",
            "--context",
            "chat/invite",
            file.to_str().unwrap(),
        ],
    )
    .json();
    let public: [u8; 32] = hex::decode(signed["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signature: [u8; 64] = hex::decode(signed["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signed_bytes = hex::decode(signed["signed_bytes"].as_str().unwrap()).unwrap();
    VerifyingKey::from_bytes(&public)
        .unwrap()
        .verify(&signed_bytes, &Signature::from_bytes(&signature))
        .expect("an independent ed25519 implementation accepts the signature");
    let mut expected = b"kith-signature-v1\0".to_vec();
    expected.push(11);
    expected.extend_from_slice(b"chat/invite");
    expected.extend_from_slice(blake3::hash(b"meet at noon").as_bytes());
    assert_eq!(signed_bytes, expected);
    assert_eq!(signed["public_key"], init["identity_public_key"]);

    // Verify through the CLI, from stdin too; a wrong context or altered message fails.
    let sig = signed["signature"].as_str().unwrap();
    let key = init["id"].as_str().unwrap();
    let verify = |context: &str, message: &[u8]| {
        let args = [
            "--json",
            "id",
            "verify",
            "--context",
            context,
            "--public-key",
            key,
            "--signature",
            sig,
            "-",
        ];
        kith_in(&home, &args, message)
    };
    let ok = verify("chat/invite", b"meet at noon");
    assert_eq!(ok.json()["valid"], true);
    let wrong = verify("chat/other", b"meet at noon");
    assert!(
        wrong.error().contains("does not verify"),
        "{}",
        wrong.stderr
    );
    let altered = verify("chat/invite", b"meet at one");
    altered.error();

    // Reserved contexts, bad contexts and oversized messages are refused.
    let reserved = kith_in(
        &home,
        &["id", "sign", "--context", "kith/profile", "-"],
        b"x",
    );
    assert!(reserved.error().contains("reserved"), "{}", reserved.stderr);
    kith_in(
        &home,
        &["id", "sign", "--context", "Bad Context", "-"],
        b"x",
    )
    .error();
    let big = vec![b'a'; 1024 * 1024 + 1];
    let too_big = kith_in(&home, &["id", "sign", "--context", "a/b", "-"], &big);
    assert!(
        too_big.error().contains("larger than"),
        "{}",
        too_big.stderr
    );

    // Safety numbers agree from both sides.
    let bob = dir.path().join("bob");
    let bob_init = kith(&bob, &["--json", "init", "--name", "bob"]).json();
    let a = kith(
        &home,
        &[
            "--json",
            "id",
            "safety-number",
            bob_init["id"].as_str().unwrap(),
        ],
    )
    .json();
    let b = kith(&bob, &["--json", "id", "safety-number", key]).json();
    assert_eq!(a["safety_number"], b["safety_number"]);
}

#[test]
fn restore_gives_the_same_identity_and_bad_words_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let init = kith(&first, &["--json", "init"]).json();
    let words = init["mnemonic"].as_str().unwrap().to_owned();

    let second = dir.path().join("second");
    let restored = kith_in(
        &second,
        &["--json", "restore", "--name", "phone"],
        words.as_bytes(),
    )
    .json();
    assert_eq!(restored["identity_public_key"], init["identity_public_key"]);
    assert_ne!(restored["device_public_key"], init["device_public_key"]);

    // Refuses to overwrite unless told to; nothing changes on disk when refused.
    let before = snapshot(&second);
    let refused = kith_in(&second, &["restore"], words.as_bytes());
    assert!(
        refused.error().contains("already exists"),
        "{}",
        refused.stderr
    );
    assert_eq!(snapshot(&second), before);

    let third = dir.path().join("third");
    let mut list: Vec<&str> = words.split_whitespace().collect();
    list[2] = "notaword";
    let wrong_word = kith_in(&third, &["restore"], list.join(" ").as_bytes());
    assert!(
        wrong_word.error().contains("word 3 \"notaword\""),
        "{}",
        wrong_word.stderr
    );
    let mut list: Vec<&str> = words.split_whitespace().collect();
    list.swap(0, 1);
    if list[0] != list[1] {
        let checksum = kith_in(&third, &["restore"], list.join(" ").as_bytes());
        assert!(checksum.error().contains("checksum"), "{}", checksum.stderr);
    }
    let short = kith_in(&third, &["restore"], b"abandon abandon");
    assert!(
        short.error().contains("expected 24 words"),
        "{}",
        short.stderr
    );
    assert!(!third.exists(), "failed restores write nothing");

    // --force replaces, keeping the old files aside.
    let forced = kith_in(&second, &["--json", "restore", "--force"], words.as_bytes()).json();
    assert_eq!(forced["identity_public_key"], init["identity_public_key"]);
    let aside = std::fs::read_dir(second.join("identity"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("replaced")
        })
        .count();
    assert_eq!(aside, 2);
}

#[test]
fn wrong_passphrase_and_damaged_keystore_are_clear_errors_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    kith(&home, &["init"]).ok();
    let before = snapshot(&home);

    let mut cmd = kith_cmd(&home);
    cmd.env("KITH_PASSPHRASE", "not the passphrase");
    let wrong = run_with(cmd, &["id", "show"], b"");
    assert!(
        wrong.error().contains("wrong passphrase"),
        "{}",
        wrong.stderr
    );
    let mut cmd = kith_cmd(&home);
    cmd.env("KITH_PASSPHRASE", "not the passphrase");
    run_with(cmd, &["profile", "set", "--name", "x"], b"").error();
    assert_eq!(snapshot(&home), before);

    // The passphrase can come from a file (a docker secret).
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let mut cmd = kith_cmd(&home);
    cmd.env_remove("KITH_PASSPHRASE");
    let from_file = run_with(
        cmd,
        &[
            "--passphrase-file",
            pass_file.to_str().unwrap(),
            "--json",
            "id",
            "show",
        ],
        b"",
    );
    from_file.json();

    let keystore = home.join("identity/keystore.json");
    let good = std::fs::read(&keystore).unwrap();
    std::fs::write(&keystore, &good[..good.len() / 3]).unwrap();
    let truncated = kith(&home, &["id", "show"]);
    assert!(
        truncated.error().contains("corrupted"),
        "{}",
        truncated.stderr
    );
    let mut flipped = good.clone();
    let i = flipped.len() - 100;
    flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
    std::fs::write(&keystore, &flipped).unwrap();
    let corrupted = kith(&home, &["id", "show"]);
    assert!(
        corrupted.error().contains("corrupted"),
        "{}",
        corrupted.stderr
    );
    std::fs::write(&keystore, &good).unwrap();
    kith(&home, &["--json", "id", "show"]).json();

    let state = home.join("identity/state.json");
    let good_state = std::fs::read_to_string(&state).unwrap();
    std::fs::write(
        &state,
        good_state.replacen("\"name\": \"", "\"name\": \"x", 1),
    )
    .unwrap();
    let forged_state = kith(&home, &["id", "show"]);
    assert!(
        forged_state.error().contains("corrupted"),
        "{}",
        forged_state.stderr
    );
}

#[test]
fn link_approve_list_and_revoke_devices() {
    let dir = tempfile::tempdir().unwrap();
    let desktop = dir.path().join("desktop");
    let laptop = dir.path().join("laptop");
    let init = kith(&desktop, &["--json", "init", "--name", "desktop"]).json();

    let link = kith(&laptop, &["--json", "device", "link", "--name", "laptop"]).json();
    let code = link["link_code"].as_str().unwrap();
    assert!(code.starts_with("kithlink1"));
    // A mistyped code is caught by its checksum.
    let mut typo = code.to_owned();
    typo.replace_range(20..21, if &code[20..21] == "q" { "p" } else { "q" });
    assert!(
        kith(&desktop, &["device", "approve", &typo])
            .error()
            .contains("link code is not valid")
    );

    let approval = kith(&desktop, &["--json", "device", "approve", code]).json();
    let approval_code = approval["approval_code"].as_str().unwrap();
    let finished = kith(
        &laptop,
        &["--json", "device", "link", "--finish", approval_code],
    )
    .json();
    assert_eq!(finished["identity_public_key"], init["identity_public_key"]);
    let laptop_show = kith(&laptop, &["--json", "id", "show"]).json();
    assert_eq!(laptop_show["holds_identity_secret"], false);

    // The laptop signs with its device key; it cannot approve others.
    let signed = kith_in(
        &laptop,
        &["--json", "id", "sign", "--context", "a/b", "-"],
        b"hi",
    )
    .json();
    assert_eq!(signed["public_key"], link["device_public_key"]);
    let other = dir.path().join("other");
    let other_code = kith(&other, &["--json", "device", "link"]).json()["link_code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        kith(&laptop, &["device", "approve", &other_code])
            .error()
            .contains("no identity secret")
    );
    // An approval for another device's request is refused.
    assert!(
        kith(&other, &["device", "link", "--finish", approval_code])
            .error()
            .contains("another device")
    );

    let list = kith(&desktop, &["--json", "device", "list"]).json();
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);
    let laptop_key = link["device_public_key"].as_str().unwrap();
    let revoked = kith(
        &desktop,
        &[
            "--json",
            "device",
            "revoke",
            &laptop_key[..12],
            "--reason",
            "lost",
        ],
    )
    .json();
    assert_eq!(revoked["revoked"], laptop_key);
    assert_eq!(revoked["revocation_version"], 1);
    let list = kith(&desktop, &["--json", "device", "list"]).json();
    let entry = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_public_key"] == laptop_key)
        .unwrap()
        .clone();
    assert_eq!(entry["revoked"], true);
    let own = init["device_public_key"].as_str().unwrap();
    assert!(
        kith(&desktop, &["device", "revoke", own])
            .error()
            .contains("device you are on")
    );
}

#[test]
fn profiles_set_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    kith(&home, &["init"]).ok();
    assert!(
        kith(&home, &["profile", "show"])
            .error()
            .contains("no profile")
    );
    let avatar = dir.path().join("avatar.png");
    std::fs::write(&avatar, b"not really a png").unwrap();
    let set = kith(
        &home,
        &[
            "--json",
            "profile",
            "set",
            "--name",
            "Alice",
            "--bio",
            "hi there",
            "--avatar",
            avatar.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(set["version"], 1);
    assert_eq!(
        set["avatar_hash"],
        blake3::hash(b"not really a png").to_hex().to_string()
    );
    let set2 = kith(&home, &["--json", "profile", "set", "--bio", "new bio"]).json();
    assert_eq!(set2["version"], 2);
    assert_eq!(set2["display_name"], "Alice");
    let show = kith(&home, &["--json", "profile", "show"]).json();
    assert_eq!(show, set2);
    assert!(
        kith(&home, &["profile", "set", "--name", &"x".repeat(100)])
            .error()
            .contains("at most 64")
    );
    assert!(
        kith(&home, &["profile", "show", "kith1notanid"])
            .error()
            .contains("not valid")
    );
}

#[test]
fn node_up_serves_the_cli_over_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("node");
    // `node up` on an empty home creates the identity first.
    let (mut node, ready) = start(&home, &["--json", "node", "up"]);
    assert_eq!(ready["event"], "ready");
    let socket = home.join("run/identity.sock");
    assert_eq!(
        ready["services"]["identity"][0],
        format!("unix:{}", socket.display())
    );

    // With the node up, commands go through its socket: no passphrase needed.
    let mut cmd = kith_cmd(&home);
    cmd.env_remove("KITH_PASSPHRASE");
    let show = run_with(cmd, &["--json", "id", "show"], b"").json();
    assert_eq!(show["id"], ready["id"]);
    assert_eq!(kith(&home, &["--json", "health"]).json()["serving"], true);
    kith(&home, &["--json", "profile", "set", "--name", "Node"]).json();

    // A second node on the same home is refused with a clear error.
    let second = kith(&home, &["node", "up"]);
    assert!(second.error().contains("in use"), "{}", second.stderr);

    assert_eq!(sigterm(&mut node), 0, "clean shutdown on SIGTERM");
    assert!(!socket.exists());
    // The profile set through the node persisted.
    assert_eq!(
        kith(&home, &["--json", "profile", "show"]).json()["display_name"],
        "Node"
    );
    let down = kith(&home, &["health"]);
    assert!(down.error().contains("not running"), "{}", down.stderr);
}

#[test]
fn serve_identity_over_tcp_requires_the_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("svc");
    kith(&home, &["init"]).ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let (mut node, ready) = start(
        &home,
        &["--json", "serve", "identity", "--listen", &endpoint],
    );
    assert_eq!(ready["services"]["identity"][0], endpoint);
    let cookie = home.join("run/identity.cookie");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cookie).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);

    // From another home (no keystore at all): the endpoint and the cookie are enough.
    let elsewhere = dir.path().join("elsewhere");
    let remote = kith(
        &elsewhere,
        &[
            "--json",
            "--endpoint",
            &endpoint,
            "--token-file",
            cookie.to_str().unwrap(),
            "id",
            "show",
        ],
    )
    .json();
    assert!(remote["id"].as_str().unwrap().starts_with("kith1"));
    let bad_token = dir.path().join("bad");
    std::fs::write(&bad_token, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(
        &bad_token,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let refused = kith(
        &elsewhere,
        &[
            "--endpoint",
            &endpoint,
            "--token-file",
            bad_token.to_str().unwrap(),
            "id",
            "show",
        ],
    );
    assert!(refused.error().contains("credential"), "{}", refused.stderr);
    assert!(!elsewhere.exists(), "a remote call writes nothing locally");
    assert_eq!(sigterm(&mut node), 0);
}

#[test]
fn the_bip39_passphrase_is_part_of_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = kith_cmd(&dir.path().join("a"));
    cmd.env("KITH_BIP39_PASSPHRASE", "twenty-fifth word");
    let init = run_with(cmd, &["--json", "init"], b"").json();
    let words = init["mnemonic"].as_str().unwrap();

    let without = kith_in(
        &dir.path().join("b"),
        &["--json", "restore"],
        words.as_bytes(),
    )
    .json();
    assert_ne!(without["identity_public_key"], init["identity_public_key"]);
    let mut cmd = kith_cmd(&dir.path().join("c"));
    cmd.env("KITH_BIP39_PASSPHRASE", "twenty-fifth word");
    let with = run_with(cmd, &["--json", "restore"], words.as_bytes()).json();
    assert_eq!(with["identity_public_key"], init["identity_public_key"]);
}

#[test]
fn two_nodes_connect_and_show_their_peers_nat_and_dht() {
    let dir = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (dir.path().join("a"), dir.path().join("b"));
    // Before any node runs, the transport commands say so in one line.
    kith(&home_a, &["init"]).ok();
    let down = kith(&home_a, &["peer", "list"]);
    assert!(down.error().contains("not running"), "{}", down.stderr);

    let up = ["--json", "node", "up", "--bind", "127.0.0.1:0", "--no-mdns"];
    let (mut a, ready_a) = start(&home_a, &up);
    let (mut b, ready_b) = start(&home_b, &up);
    assert_eq!(
        ready_a["services"]["transport"][0],
        format!("unix:{}", home_a.join("run/transport.sock").display())
    );
    let peer_b = ready_b["transport"]["peer_id"].as_str().unwrap().to_owned();
    let udp_b = ready_b["transport"]["udp"].as_str().unwrap().to_owned();
    assert_eq!(peer_b.len(), 64);
    assert!(udp_b.starts_with("127.0.0.1:"), "{udp_b}");
    assert_eq!(
        kith(&home_a, &["--json", "health", "--service", "transport"]).json()["serving"],
        true
    );

    let connected = kith(
        &home_a,
        &["--json", "peer", "connect", &peer_b, "--addr", &udp_b],
    )
    .json();
    assert_eq!(connected["peer"]["peer_id"], peer_b);
    assert_eq!(connected["peer"]["route"], "direct");
    assert!(connected["ping"].as_u64().unwrap() > 0);
    let text = kith(&home_a, &["peer", "connect", &peer_b, "--addr", &udp_b]);
    text.ok();
    assert!(text.stdout.starts_with("connected to "), "{}", text.stdout);

    let peers_a = kith(&home_a, &["--json", "peer", "list"]).json();
    assert_eq!(peers_a["peers"][0]["peer_id"], peer_b);
    assert_eq!(peers_a["peers"][0]["protocols"][0], "kith/ping/1");
    // The accepting side lists the dialler.
    let peers_b = kith(&home_b, &["--json", "peer", "list"]).json();
    assert_eq!(
        peers_b["peers"][0]["peer_id"],
        ready_a["transport"]["peer_id"]
    );

    let status = kith(&home_a, &["--json", "node", "status"]).json();
    assert_eq!(status["peer_id"], ready_a["transport"]["peer_id"]);
    assert_eq!(status["local_addr"], ready_a["transport"]["udp"]);
    assert!(
        status["protocols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "kith/ping/1"),
        "{status}"
    );
    assert!(
        kith(&home_a, &["node", "status"])
            .stdout
            .contains("peer id:")
    );
    let nat = kith(&home_a, &["--json", "nat", "status"]).json();
    assert_eq!(nat["mapping"], "unknown");
    let dht = kith(&home_a, &["--json", "dht", "status"]).json();
    assert_eq!(dht["node_id"].as_str().unwrap().len(), 64);
    assert!(dht["routing_table_size"].is_u64());
    assert!(
        kith(&home_a, &["dht", "status"])
            .stdout
            .contains("node id: ")
    );

    // Bad input: one clear line, and the node is unharmed.
    let bad = kith(&home_a, &["peer", "connect", "zz"]);
    assert!(bad.error().contains("neither a peer id"), "{}", bad.stderr);
    // (A usage error: clap's own message, with its hint on later lines.)
    let bad = kith(
        &home_a,
        &["peer", "connect", &peer_b, "--relay", "nonsense"],
    );
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("expected PEER@IP:PORT"),
        "{}",
        bad.stderr
    );
    let bad = kith(
        &home_a,
        &["peer", "connect", "bob.invalid.", "--addr", &udp_b],
    );
    assert!(bad.error().contains("not a name"), "{}", bad.stderr);
    let nobody = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    let unreachable = kith(&home_a, &["peer", "connect", nobody]);
    assert!(
        unreachable.error().contains("unreachable"),
        "{}",
        unreachable.stderr
    );
    kith(&home_a, &["--json", "peer", "list"]).json();

    assert_eq!(sigterm(&mut a), 0, "clean shutdown on SIGTERM");
    assert_eq!(sigterm(&mut b), 0, "clean shutdown on SIGTERM");
    assert!(!home_a.join("run/transport.sock").exists());
    // The routing table was kept for the next start.
    assert!(home_a.join("transport/routing.json").exists());
}
