//! Mailboxes, end to end with real nodes (`kith node up`: identity, QUIC transport, DHT and
//! store in each): while its owner is offline, a depositor leaves sealed records in the owner's
//! mailbox at a third node, the keeper; the owner comes up later, fetches them from the keeper,
//! writes them out and acknowledges them, and they are gone. Bad input is refused with one line
//! and deposits nothing.

mod common;

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use common::*;
use serde_json::Value;

/// What depositor and owner share to seal records (the keeper never has it).
fn cipher() -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(&[0x3c; 32]))
}

fn seal(i: u8, plaintext: &str) -> Vec<u8> {
    let mut sealed = vec![i];
    sealed.extend(
        cipher()
            .encrypt(Nonce::from_slice(&[i; 12]), plaintext.as_bytes())
            .unwrap(),
    );
    sealed
}

fn open(sealed: &[u8]) -> String {
    let (i, ct) = (sealed[0], &sealed[1..]);
    String::from_utf8(cipher().decrypt(Nonce::from_slice(&[i; 12]), ct).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The mailbox records a node keeps.
fn kept(home: &Path) -> (u64, u64) {
    let stats = kith(home, &["--json", "mailbox", "stats"]).json();
    (
        stats["records"].as_u64().unwrap(),
        stats["bytes"].as_u64().unwrap(),
    )
}

fn ids(fetch: &Value) -> Vec<String> {
    fetch["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn records_left_at_a_keeper_reach_their_offline_owner_once() {
    let dir = tempfile::tempdir().unwrap();
    let (depositor_home, owner_home, keeper_home) = (
        dir.path().join("depositor"),
        dir.path().join("owner"),
        dir.path().join("keeper"),
    );
    for home in [&depositor_home, &owner_home, &keeper_home] {
        kith(home, &["init"]).ok();
    }
    // The owner is offline: its mailbox key comes from its keystore, in-process.
    let owner_key = kith(&owner_home, &["--json", "mailbox", "key"]).json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(owner_key.len(), 64);

    let (mut keeper, ready_k) = node_up(&keeper_home, None);
    let keeper_udp = ready_k["transport"]["udp"].as_str().unwrap().to_owned();
    let keeper_peer = ready_k["transport"]["peer_id"].as_str().unwrap().to_owned();
    let (mut depositor, _) = node_up(&depositor_home, Some(&keeper_udp));
    eventually("the DHT to join", || {
        (dht_contacts(&depositor_home) > 0 && dht_contacts(&keeper_home) > 0).then_some(())
    });

    // Bad input: one error line each, and nothing reaches the keeper.
    let oversized = dir.path().join("oversized");
    std::fs::write(&oversized, vec![7u8; 16 * 1024 + 1]).unwrap();
    let put = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--json", "mailbox", "put"];
        all.extend(args);
        kith_in(&depositor_home, &all, stdin)
    };
    let over = put(
        &[
            &owner_key,
            oversized.to_str().unwrap(),
            "--peer",
            &keeper_peer,
        ],
        b"",
    );
    assert!(
        over.error().contains("16384 bytes at most"),
        "{}",
        over.stderr
    );
    let wrong_key = put(&[&owner_key[..62], "-", "--peer", &keeper_peer], b"x");
    assert!(
        wrong_key.error().contains("must be 64 hex digits"),
        "{}",
        wrong_key.stderr
    );
    let long_ttl = put(
        &[&owner_key, "-", "--peer", &keeper_peer, "--ttl", "8d"],
        b"x",
    );
    assert!(
        long_ttl.error().contains("maximum of 7d"),
        "{}",
        long_ttl.stderr
    );
    let empty = put(&[&owner_key, "-", "--peer", &keeper_peer], b"");
    assert!(empty.error().contains("stdin is empty"), "{}", empty.stderr);
    assert_eq!(kept(&keeper_home), (0, 0));

    // The depositor seals two records for the owner and leaves them at the keeper: one from a
    // file with a TTL, one from stdin with the default (48 hours).
    let first = seal(1, "join request: carol, invited by dave");
    let second = seal(2, "are you coming tonight?");
    let first_file = dir.path().join("first.sealed");
    std::fs::write(&first_file, &first).unwrap();
    let before = now();
    let put_first = put(
        &[
            &owner_key,
            first_file.to_str().unwrap(),
            "--peer",
            &keeper_peer,
            "--ttl",
            "1h",
        ],
        b"",
    )
    .json();
    let put_second = put(&[&owner_key, "-", "--peer", &keeper_peer], &second).json();
    let after = now();
    for (put, record, ttl) in [
        (&put_first, &first, 3600),
        (&put_second, &second, 48 * 3600),
    ] {
        assert_eq!(put["id"].as_str().unwrap().len(), 64);
        assert_eq!(put["mailbox"], owner_key);
        assert_eq!(put["keeper"], keeper_peer);
        assert_eq!(put["size"], record.len());
        let expires = put["expires_at"].as_u64().unwrap();
        assert!((before + ttl..=after + ttl).contains(&expires), "{put}");
    }
    assert_eq!(kept(&keeper_home), (2, (first.len() + second.len()) as u64));
    // Only the owner reads a mailbox: the depositor's fetch at the keeper is its own, empty.
    let theirs = kith(
        &depositor_home,
        &["--json", "mailbox", "fetch", "--peer", &keeper_peer],
    )
    .json();
    assert_eq!(theirs["records"], Value::Array(vec![]));
    assert_eq!(sigterm(&mut depositor), 0);

    // The owner comes up and fetches from the keeper.
    let (mut owner, _) = node_up(&owner_home, Some(&keeper_udp));
    let running_key = kith(&owner_home, &["--json", "mailbox", "key"]).json();
    assert_eq!(running_key["key"], owner_key, "the key is the node's own");
    let fetch = |extra: &[&str]| {
        let mut args = vec!["--json", "mailbox", "fetch", "--peer", &keeper_peer];
        args.extend(extra);
        kith(&owner_home, &args)
    };
    let listed = eventually("the owner to reach the keeper", || {
        let run = fetch(&[]);
        (run.code == 0).then(|| run.json())
    });
    assert_eq!(listed["keeper"], keeper_peer);
    assert_eq!(listed["acknowledged"], false);
    // Oldest first, by the second; records of the same second by id.
    let sealed_by_id = |id: &str| {
        [(&put_first, &first), (&put_second, &second)]
            .into_iter()
            .find(|(put, _)| put["id"] == id)
            .map(|(_, sealed)| sealed.clone())
            .unwrap_or_else(|| panic!("{id} was never deposited"))
    };
    let records = listed["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_ne!(records[0]["id"], records[1]["id"]);
    let mut plaintexts = Vec::new();
    for r in records {
        let sealed = sealed_by_id(r["id"].as_str().unwrap());
        assert_eq!(r["size"], sealed.len());
        assert_eq!(r["data"], hex::encode(&sealed));
        assert!(r["expires_at"].as_u64().unwrap() > r["received_at"].as_u64().unwrap());
        plaintexts.push(open(&hex::decode(r["data"].as_str().unwrap()).unwrap()));
    }
    plaintexts.sort();
    assert_eq!(
        plaintexts,
        [
            "are you coming tonight?",
            "join request: carol, invited by dave"
        ]
    );

    // Listing removed nothing; --ack --out writes them out, then removes them.
    let out = dir.path().join("inbox");
    let acked = fetch(&["--ack", "--out", out.to_str().unwrap()]).json();
    assert_eq!(acked["acknowledged"], true);
    assert_eq!(ids(&acked), ids(&listed));
    for r in acked["records"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let path = out.join(id);
        assert_eq!(r["file"], path.to_str().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), sealed_by_id(id));
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);

    // Gone from the keeper.
    let again = fetch(&[]).json();
    assert_eq!(again["records"], Value::Array(vec![]));
    assert_eq!(kept(&keeper_home), (0, 0));

    assert_eq!(sigterm(&mut owner), 0);
    assert_eq!(sigterm(&mut keeper), 0);
}
