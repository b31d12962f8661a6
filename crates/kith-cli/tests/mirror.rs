//! Blind mirrors, end to end with real nodes (`kith node up`: identity, QUIC transport, DHT and
//! store in each): a writer's log and file reach a mirror that holds no key; the writer goes
//! offline; a reader that knows the keys catches up from the mirror alone. Then every byte the
//! mirror's node wrote (its database, WAL, every file in its home) is searched for the
//! plaintext canaries: none may be there.

mod common;

use std::path::Path;

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
    for (path, bytes) in &files {
        for canary in CANARIES {
            let needle = canary.as_bytes();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{canary:?} found in {}",
                path.display()
            );
        }
    }
}
