//! Standard test vectors, loaded from data files: BIP39 (Trezor, 24 words), SLIP-0010 ed25519 and
//! RFC 8032 Ed25519.

use kith_identity::keys::{PublicKey, SecretKey, Signature, Slip10Node, parse_hardened_path};
use kith_identity::parse_mnemonic;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn bip39_trezor_24_word_vectors() {
    let data = load("bip39_trezor_24.json");
    let passphrase = data["passphrase"].as_str().unwrap();
    let vectors = data["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 8);
    for v in vectors {
        let words = v["mnemonic"].as_str().unwrap();
        let mnemonic = parse_mnemonic(words).unwrap();
        assert_eq!(
            hex::encode(mnemonic.to_entropy()),
            v["entropy"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(mnemonic.to_seed_normalized(passphrase)),
            v["seed"].as_str().unwrap()
        );
        let from_entropy =
            bip39::Mnemonic::from_entropy(&hex::decode(v["entropy"].as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(from_entropy.to_string(), words);
    }
}

#[test]
fn slip10_ed25519_vectors() {
    let data = load("slip10_ed25519.json");
    let mut steps = 0;
    for v in data["vectors"].as_array().unwrap() {
        let seed = hex::decode(v["seed"].as_str().unwrap()).unwrap();
        for d in v["derivations"].as_array().unwrap() {
            let path = parse_hardened_path(d["path"].as_str().unwrap()).unwrap();
            let node = Slip10Node::derive_path(&seed, &path);
            assert_eq!(
                hex::encode(&node.key[..]),
                d["private"].as_str().unwrap(),
                "{}",
                d["path"]
            );
            assert_eq!(
                hex::encode(&node.chain_code[..]),
                d["chain_code"].as_str().unwrap()
            );
            let public = SecretKey::from_bytes(&node.key).public_key();
            assert_eq!(
                format!("00{}", public.to_hex()),
                d["public"].as_str().unwrap()
            );
            steps += 1;
        }
    }
    assert_eq!(steps, 12);
}

#[test]
fn rfc8032_ed25519_vectors() {
    let data = load("rfc8032_ed25519.json");
    let vectors = data["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 5);
    for v in vectors {
        let secret = SecretKey::from_bytes(&hex32(&v["secret_key"]));
        let public = PublicKey::from_hex(v["public_key"].as_str().unwrap()).unwrap();
        assert_eq!(secret.public_key(), public, "{}", v["name"]);
        let message = hex::decode(v["message"].as_str().unwrap()).unwrap();
        let signature = secret.sign_raw(&message);
        assert_eq!(
            signature.to_hex(),
            v["signature"].as_str().unwrap(),
            "{}",
            v["name"]
        );
        public.verify_raw(&message, &signature).unwrap();
        let mut bad = signature.0;
        bad[0] ^= 1;
        assert!(public.verify_raw(&message, &Signature(bad)).is_err());
    }
}

#[test]
fn restoring_the_same_words_gives_the_same_identity_key() {
    // The identity key depends only on the words (and BIP39 passphrase), through IDENTITY_PATH.
    let data = load("bip39_trezor_24.json");
    let words = data["vectors"][0]["mnemonic"].as_str().unwrap();
    let seed = parse_mnemonic(words).unwrap().to_seed_normalized("");
    let a = kith_identity::keys::identity_key_from_seed(&seed).public_key();
    let b = kith_identity::keys::identity_key_from_seed(&seed).public_key();
    assert_eq!(a, b);
    let other = parse_mnemonic(words).unwrap().to_seed_normalized("TREZOR");
    assert_ne!(
        a,
        kith_identity::keys::identity_key_from_seed(&other).public_key()
    );
}
