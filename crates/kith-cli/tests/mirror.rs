//! Blind mirrors, end to end with real nodes (`kith node up`: identity, QUIC transport, DHT and
//! store in each): a writer's log and file reach a mirror that holds no key; the writer goes
//! offline; a reader that knows the keys catches up from the mirror alone. Then every byte the
//! mirror's node wrote (its database, WAL, every file in its home) is searched for the
//! plaintext canaries: none may be there. And a room mirrored by its discovery topic alone: two
//! writers put their logs in the room, a mirror given only the topic finds and keeps both, every
//! writer goes offline, a reader knowing only the topic (and the room's key) catches both logs
//! up from the mirror; no canary in what the mirror wrote, and not the topic either, in any
//! node's files.

mod common;

use std::path::Path;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use common::*;

const CANARIES: [&str; 3] = [
    "CANARY-7f3a9c: the eagle lands at dawn",
    "CANARY-1b2e44: meet by the old mill",
    "CANARY-c0ffee: passphrase is swordfish",
];

/// The room's secret key: what members have and the mirror never sees.
fn room_cipher() -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(&[0x5a; 32]))
}

fn seal(i: usize, plaintext: &str) -> String {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let ct = room_cipher()
        .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
        .unwrap();
    // `kith log append` takes text entries: the ciphertext travels hex-encoded.
    hex::encode(ct)
}

fn open(i: usize, entry: &str) -> String {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let pt = room_cipher()
        .decrypt(
            Nonce::from_slice(&nonce),
            hex::decode(entry).unwrap().as_slice(),
        )
        .unwrap();
    String::from_utf8(pt).unwrap()
}

/// Every file under `dir`, with its bytes.
fn all_bytes(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_bytes(&path, out);
        } else if path.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

/// Which of `needles` appear in which of `files` ("needle in path").
fn found_in(files: &[(std::path::PathBuf, Vec<u8>)], needles: &[(&str, &[u8])]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, bytes) in files {
        for (name, needle) in needles {
            if bytes.windows(needle.len()).any(|w| w == *needle) {
                found.push(format!("{name} in {}", path.display()));
            }
        }
    }
    found
}

fn canary_needles() -> Vec<(&'static str, &'static [u8])> {
    CANARIES.iter().map(|c| (*c, c.as_bytes())).collect()
}

#[test]
fn a_reader_catches_up_from_a_blind_mirror_that_never_holds_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (writer_home, mirror_home, reader_home) = (
        dir.path().join("writer"),
        dir.path().join("mirror"),
        dir.path().join("reader"),
    );
    for home in [&writer_home, &mirror_home, &reader_home] {
        kith(home, &["init"]).ok();
    }
    let (mut writer, ready_w) = node_up(&writer_home, None);
    let writer_udp = ready_w["transport"]["udp"].as_str().unwrap().to_owned();
    let (mut mirror, ready_m) = node_up(&mirror_home, Some(&writer_udp));
    let mirror_udp = ready_m["transport"]["udp"].as_str().unwrap().to_owned();
    eventually("the DHT to join", || {
        (dht_contacts(&writer_home) > 0 && dht_contacts(&mirror_home) > 0).then_some(())
    });

    // The writer (a member) appends sealed canaries and shares a file holding them.
    let sealed: Vec<String> = CANARIES
        .iter()
        .enumerate()
        .map(|(i, c)| seal(i, c))
        .collect();
    let mut args = vec!["--json", "log", "append", "room"];
    args.extend(sealed.iter().map(String::as_str));
    let log = kith(&writer_home, &args).json();
    let key = log["key"].as_str().unwrap().to_owned();
    let plain_file = dir.path().join("secret.txt");
    let mut content = Vec::new();
    for i in 0..20_000 {
        content.extend_from_slice(CANARIES[i % 3].as_bytes());
        content.push(b'\n');
    }
    std::fs::write(&plain_file, &content).unwrap();
    let put = kith(
        &writer_home,
        &["--json", "file", "put", plain_file.to_str().unwrap()],
    )
    .json();
    let ticket = put["ticket"].as_str().unwrap().to_owned();
    let file_id = put["id"].as_str().unwrap().to_owned();

    // The mirror is given the log's key and the file's id: nothing that decrypts.
    let added = kith(&mirror_home, &["--json", "mirror", "add", &key]).json();
    assert_eq!(added["key"], key);
    eventually("the mirror to replicate the log", || {
        let list = kith(&mirror_home, &["--json", "mirror", "list"]).json();
        (list["mirrors"][0]["held_entries"] == 3).then_some(())
    });
    let fetched = kith(&mirror_home, &["--json", "file", "fetch", &file_id]).json();
    assert_eq!(fetched["held_blocks"], fetched["blocks"]);

    // The writer goes offline for good.
    assert_eq!(sigterm(&mut writer), 0);

    // A reader knowing the keys catches up from the mirror alone.
    let (mut reader, _) = node_up(&reader_home, Some(&mirror_udp));
    eventually("the reader to join the DHT", || {
        (dht_contacts(&reader_home) > 0).then_some(())
    });
    let synced = eventually("the reader to sync from the mirror", || {
        let run = kith(&reader_home, &["--json", "log", "sync", &key]);
        (run.code == 0).then(|| run.json())
    });
    assert_eq!(synced["length"], 3);
    let read = kith(&reader_home, &["--json", "log", "read", &key]).json();
    let entries: Vec<String> = read["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| String::from_utf8(hex::decode(e.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    let opened: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| open(i, e))
        .collect();
    assert_eq!(opened, CANARIES);
    let out = dir.path().join("from-mirror.txt");
    kith(
        &reader_home,
        &[
            "--json",
            "file",
            "get",
            &ticket,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(std::fs::read(&out).unwrap(), content);

    // The mirror's node, stopped: not one canary anywhere in what it wrote.
    assert_eq!(sigterm(&mut reader), 0);
    assert_eq!(sigterm(&mut mirror), 0);
    let mut files = Vec::new();
    all_bytes(&mirror_home, &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("store/store.db")),
        "the mirror's database"
    );
    // It holds the ciphertext it serves: in its database or its store's blob dir.
    let held: usize = files
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/store/"))
        .map(|(_, b)| b.len())
        .sum();
    assert!(
        held > content.len() / 2,
        "the mirror holds the file's ciphertext"
    );
    let found = found_in(&files, &canary_needles());
    assert!(found.is_empty(), "plaintext in the mirror: {found:?}");
    // The scan finds a canary where there is one.
    let control = vec![(plain_file.clone(), content.clone())];
    assert_eq!(found_in(&control, &canary_needles()).len(), 3);
}

/// Entries `(nonce, plaintext)` sealed with the room's key, as `kith log append` takes them.
fn sealed(first_nonce: usize) -> Vec<String> {
    CANARIES
        .iter()
        .enumerate()
        .map(|(i, c)| seal(first_nonce + i, c))
        .collect()
}

#[test]
fn a_room_mirrored_by_its_topic_alone_serves_a_reader_while_every_writer_is_offline() {
    let dir = tempfile::tempdir().unwrap();
    let homes: Vec<_> = ["writer-a", "writer-b", "mirror", "reader"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let (wa_home, wb_home, mirror_home, reader_home) = (&homes[0], &homes[1], &homes[2], &homes[3]);
    for home in &homes {
        kith(home, &["init"]).ok();
    }
    // The room's discovery topic: members have it (kept out of command lines: stdin).
    let topic = *blake3::hash(b"the room of the eagle").as_bytes();
    let topic_hex = hex::encode(topic);
    let topic_in = format!("{topic_hex}\n");

    let (mut wa, ready) = node_up(wa_home, None);
    let wa_udp = ready["transport"]["udp"].as_str().unwrap().to_owned();
    let (mut wb, _) = node_up(wb_home, Some(&wa_udp));
    let (mut mirror, ready) = node_up(mirror_home, Some(&wa_udp));
    let mirror_udp = ready["transport"]["udp"].as_str().unwrap().to_owned();
    eventually("the DHT to join", || {
        [wa_home, wb_home, mirror_home]
            .iter()
            .all(|h| dht_contacts(h) > 0)
            .then_some(())
    });

    // Each writer puts its log in the room and appends sealed canaries (distinct nonces).
    let mut logs = Vec::new();
    for (home, first_nonce) in [(wa_home, 0), (wb_home, 10)] {
        let tagged = kith_in(
            home,
            &["--json", "log", "tag", "room", "-"],
            topic_in.as_bytes(),
        )
        .json();
        let topic_id = tagged["topics"][0].as_str().unwrap().to_owned();
        let entries = sealed(first_nonce);
        let mut args = vec!["--json", "log", "append", "room"];
        args.extend(entries.iter().map(String::as_str));
        let log = kith(home, &args).json();
        assert_eq!(log["key"], tagged["key"]);
        logs.push((
            log["key"].as_str().unwrap().to_owned(),
            first_nonce,
            topic_id,
        ));
    }
    let topic_id = logs[0].2.clone();
    assert_eq!(logs[1].2, topic_id);
    assert_ne!(topic_id, topic_hex, "the id is not the topic");
    let mut keys: Vec<String> = logs.iter().map(|l| l.0.clone()).collect();
    keys.sort();

    // The mirror is given the topic alone: it finds both logs and keeps them.
    let added = kith_in(
        mirror_home,
        &["--json", "mirror", "add", "--topic", "-"],
        topic_in.as_bytes(),
    )
    .json();
    assert_eq!(added["topic_id"], topic_id);
    let list = eventually_within(
        Duration::from_secs(90),
        "the mirror to find and replicate the room",
        || {
            let list = kith(mirror_home, &["--json", "mirror", "list"]).json();
            let held = list["mirrors"]
                .as_array()
                .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["held_entries"] == 3));
            held.then_some(list)
        },
    );
    let found: Vec<String> = list["topics"][0]["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(found, keys);
    for m in list["mirrors"].as_array().unwrap() {
        assert_eq!(m["by_key"], false);
        assert_eq!(m["topics"][0], topic_id);
    }

    // Every writer goes offline for good.
    assert_eq!(sigterm(&mut wa), 0);
    assert_eq!(sigterm(&mut wb), 0);

    // A reader knowing only the topic and the room's key catches both logs up from the mirror.
    let (mut reader, _) = node_up(reader_home, Some(&mirror_udp));
    eventually("the reader to join the DHT", || {
        (dht_contacts(reader_home) > 0).then_some(())
    });
    let synced = eventually_within(
        Duration::from_secs(120),
        "the reader to sync the room",
        || {
            let run = kith_in(
                reader_home,
                &["--json", "log", "sync", "--topic", "-"],
                topic_in.as_bytes(),
            );
            let report = (run.code == 0).then(|| run.json())?;
            let complete = report["logs"].as_array().is_some_and(|l| {
                l.len() == 2 && l.iter().all(|l| l["length"] == 3 && l["error"].is_null())
            });
            complete.then_some(report)
        },
    );
    assert_eq!(synced["topic_id"], topic_id);
    for (key, first_nonce, _) in &logs {
        let read = kith(reader_home, &["--json", "log", "read", key]).json();
        let opened: Vec<String> = read["entries"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let text = String::from_utf8(hex::decode(e.as_str().unwrap()).unwrap()).unwrap();
                open(first_nonce + i, &text)
            })
            .collect();
        assert_eq!(opened, CANARIES);
    }
    // The reader lists the room's logs by its topic too.
    let listed = kith_in(
        reader_home,
        &["--json", "log", "list", "--topic", "-"],
        topic_in.as_bytes(),
    )
    .json();
    let listed: Vec<&str> = listed["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, keys);

    // Stopped: not one canary in what the mirror wrote, and the topic in no node's files
    // (each keeps only what is derived from it).
    assert_eq!(sigterm(&mut reader), 0);
    assert_eq!(sigterm(&mut mirror), 0);
    let mut mirror_files = Vec::new();
    all_bytes(mirror_home, &mut mirror_files);
    assert!(
        mirror_files
            .iter()
            .any(|(p, _)| p.ends_with("store/store.db")),
        "the mirror's database"
    );
    let found = found_in(&mirror_files, &canary_needles());
    assert!(found.is_empty(), "plaintext in the mirror: {found:?}");
    let topic_needles: [(&str, &[u8]); 2] = [
        ("the topic", &topic),
        ("the topic in hex", topic_hex.as_bytes()),
    ];
    for home in &homes {
        let mut files = Vec::new();
        all_bytes(home, &mut files);
        let found = found_in(&files, &topic_needles);
        assert!(found.is_empty(), "the topic is kept: {found:?}");
    }
    // The scan finds the topic where it is.
    let control = vec![(dir.path().join("control"), topic_in.clone().into_bytes())];
    assert_eq!(found_in(&control, &topic_needles).len(), 1);
}
