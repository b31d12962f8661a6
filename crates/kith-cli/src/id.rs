//! `kith id`: show this identity, sign and verify with domain separation, safety numbers.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use kith_identity::KeyKind;
use kith_identity::api::{MAX_SIGN_MESSAGE, VerifyItem};
use kith_identity::ids::{parse_id, safety_number};
use kith_identity::keys::{Context, Signature};
use serde_json::json;

use crate::context::Ctx;
use crate::output::emit;
use crate::setup::identity_json;

#[derive(clap::Subcommand)]
pub enum IdCommand {
    /// Show this identity and device.
    Show,
    /// Sign a file (or `-` for stdin) under a context.
    Sign {
        /// What the signature is for, e.g. `chat/invite`; part of what is signed.
        #[arg(long)]
        context: String,
        /// Which key signs (default: identity if this device holds it, else device).
        #[arg(long, value_enum)]
        key: Option<KeyArg>,
        /// The file to sign, or `-` for stdin.
        file: PathBuf,
    },
    /// Verify a signature over a file (or `-` for stdin) under a context.
    Verify {
        #[arg(long)]
        context: String,
        /// The signer's public key (hex) or id (`kith1…`).
        #[arg(long)]
        public_key: String,
        /// The signature, hex.
        #[arg(long)]
        signature: String,
        file: PathBuf,
    },
    /// The safety number to compare with another identity out of band.
    SafetyNumber {
        /// The other identity's id (`kith1…`) or public key (hex).
        other: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KeyArg {
    Identity,
    Device,
}

/// Reads a message, refusing more than the service accepts.
fn read_message(file: &PathBuf) -> anyhow::Result<Bytes> {
    let mut buf = Vec::new();
    let limit = MAX_SIGN_MESSAGE as u64 + 1;
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .context("read stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("open {}", file.display()))?
            .take(limit)
            .read_to_end(&mut buf)
            .with_context(|| format!("read {}", file.display()))?;
    }
    if buf.len() > MAX_SIGN_MESSAGE {
        anyhow::bail!("message is larger than {MAX_SIGN_MESSAGE} bytes; sign a hash of it instead");
    }
    Ok(buf.into())
}

pub async fn run(ctx: &Ctx, cmd: IdCommand) -> anyhow::Result<()> {
    match cmd {
        IdCommand::Show => {
            let info = ctx.identity().await?.show().await?;
            emit(ctx.json, identity_json(&info), || {
                format!(
                    "id:            {}\nsearch code:   {}\nidentity key:  {}\ndevice key:    {} ({})\nholds words:   {}",
                    info.id,
                    info.search_code,
                    info.identity.to_hex(),
                    info.device.to_hex(),
                    info.attestation.name,
                    if info.holds_identity_secret {
                        "yes"
                    } else {
                        "no (linked device)"
                    }
                )
            });
        }
        IdCommand::Sign { context, key, file } => {
            let context = Context::for_caller(&context)?;
            let message = read_message(&file)?;
            let key = match key {
                None => KeyKind::Preferred,
                Some(KeyArg::Identity) => KeyKind::Identity,
                Some(KeyArg::Device) => KeyKind::Device,
            };
            let signed = ctx
                .identity()
                .await?
                .sign(key, context.clone(), message)
                .await?;
            emit(
                ctx.json,
                json!({
                    "context": context.as_str(),
                    "public_key": signed.public_key.to_hex(),
                    "signature": signed.signature.to_hex(),
                    "signed_bytes": hex::encode(&signed.signed_bytes),
                }),
                || signed.signature.to_hex(),
            );
        }
        IdCommand::Verify {
            context,
            public_key,
            signature,
            file,
        } => {
            let item = VerifyItem {
                public_key: parse_id(&public_key)?,
                context: Context::new(&context)?,
                message: read_message(&file)?,
                signature: Signature::from_bytes(
                    &hex::decode(signature.trim()).context("signature is not hex")?,
                )?,
            };
            // Verification needs no secret: do it here unless a service is already running.
            match ctx.connection(kith_identity::daemon::SERVICE)? {
                Some(conn) => {
                    kith_identity::IdentityClient::connect(conn)
                        .verify(item)
                        .await?
                }
                None => item
                    .public_key
                    .verify(&item.context, &item.message, &item.signature)?,
            }
            emit(ctx.json, json!({ "valid": true }), || {
                "signature is valid".into()
            });
        }
        IdCommand::SafetyNumber { other } => {
            let other = parse_id(&other)?;
            let mine = ctx.identity().await?.show().await?.identity;
            let number = safety_number(&mine, &other);
            emit(ctx.json, json!({ "safety_number": number }), || {
                number.clone()
            });
        }
    }
    Ok(())
}
