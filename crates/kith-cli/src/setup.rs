//! `kith init` and `kith restore`: creating this device's identity.

use std::io::{IsTerminal, Read};

use anyhow::Context as _;
use kith_identity::{IdentityApi, IdentityService, SetupOptions};
use serde_json::json;
use zeroize::Zeroizing;

use crate::context::Ctx;
use crate::output::emit;

#[derive(clap::Args)]
pub struct InitArgs {
    /// This device's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing identity (its files are kept aside, not deleted).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// This device's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing identity (its files are kept aside, not deleted).
    #[arg(long)]
    force: bool,
}

pub fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kith-device".to_owned())
}

/// The optional BIP39 passphrase ("25th word") comes only from `KITH_BIP39_PASSPHRASE`.
fn bip39_passphrase() -> Zeroizing<String> {
    Zeroizing::new(std::env::var("KITH_BIP39_PASSPHRASE").unwrap_or_default())
}

/// Setup options from the command line. `KITH_INSECURE_FAST_KDF=1` lowers the keystore's
/// key-stretching cost; it exists for test suites and must not be used for a real identity.
pub fn options(name: Option<String>, force: bool) -> SetupOptions {
    SetupOptions {
        device_name: name.unwrap_or_else(default_device_name),
        bip39_passphrase: bip39_passphrase(),
        force,
        kdf: kith_identity::keystore::KdfParams::from_env(),
    }
}

pub async fn init(ctx: &Ctx, args: InitArgs) -> anyhow::Result<()> {
    let passphrase = ctx.passphrase(true)?;
    let created = IdentityService::init(&ctx.home, &passphrase, options(args.name, args.force))?;
    let info = created.service.show().await?;
    print_created(ctx, &info, Some(&created.mnemonic));
    Ok(())
}

/// The public facts of an identity, as every command prints them in JSON.
pub fn identity_json(info: &kith_identity::api::IdentityInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "identity_public_key": info.identity.to_hex(),
        "device_public_key": info.device.to_hex(),
        "device_name": info.attestation.name,
        "search_code": info.search_code,
        "derivation_path": info.derivation_path,
        "holds_identity_secret": info.holds_identity_secret,
    })
}

pub fn print_created(
    ctx: &Ctx,
    info: &kith_identity::api::IdentityInfo,
    mnemonic: Option<&Zeroizing<String>>,
) {
    let mut value = identity_json(info);
    value["home"] = json!(ctx.home.root().display().to_string());
    if let Some(words) = mnemonic {
        value["mnemonic"] = json!(words.as_str());
    }
    emit(ctx.json, value, || {
        let mut out = format!(
            "identity created in {}\nid:          {}\nsearch code: {}\ndevice:      {} ({})\n",
            ctx.home.root().display(),
            info.id,
            info.search_code,
            info.attestation.name,
            info.device.to_hex()
        );
        if let Some(words) = mnemonic {
            out.push_str("\nyour 24 words restore this identity; write them down now, they are not shown again:\n\n");
            for (i, word) in words.split_whitespace().enumerate() {
                out.push_str(&format!("{:>4}. {word:<10}", i + 1));
                if i % 4 == 3 {
                    out.push('\n');
                }
            }
        }
        out
    });
}

pub async fn restore(ctx: &Ctx, args: RestoreArgs) -> anyhow::Result<()> {
    let words = read_words()?;
    let passphrase = ctx.passphrase(true)?;
    let service = IdentityService::restore(
        &ctx.home,
        &passphrase,
        &words,
        options(args.name, args.force),
    )?;
    let info = service.show().await?;
    print_created(ctx, &info, None);
    Ok(())
}

/// Reads the words from stdin (never argv, which other users can see in the process list).
fn read_words() -> anyhow::Result<Zeroizing<String>> {
    let mut words = Zeroizing::new(String::new());
    if std::io::stdin().is_terminal() {
        eprintln!("enter your 24 words, then press Enter:");
        std::io::stdin()
            .read_line(&mut words)
            .context("read words")?;
    } else {
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut words)
            .context("read words from stdin")?;
    }
    Ok(words)
}
