//! `kith device`: link a new device, approve links, list and revoke devices.

use kith_identity::IdentityApi;
use kith_identity::IdentityService;
use kith_identity::api::DeviceEntry;
use kith_identity::keys::PublicKey;
use kith_identity::link::LinkRequest;
use serde_json::json;

use crate::context::Ctx;
use crate::output::{emit, time};
use crate::setup::{options, print_created};

#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// On a new device: ask to join an identity. Prints a link code to approve on a device that
    /// holds the words; then finish with `--finish APPROVAL_CODE`.
    Link {
        /// This device's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The approval code printed by `kith device approve`.
        #[arg(long)]
        finish: Option<String>,
        /// Replace an existing identity on this device (its files are kept aside).
        #[arg(long)]
        force: bool,
    },
    /// Approve a link code from a new device; prints the approval code to finish with.
    Approve {
        code: String,
        /// The attestation expires after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List the devices this identity attested from here, with revocation status.
    List,
    /// Revoke a device (hex public key, or a unique prefix of one from `device list`).
    Revoke {
        device: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn entry_json(entry: &DeviceEntry) -> serde_json::Value {
    let att = &entry.attestation;
    json!({
        "device_public_key": att.device.to_hex(),
        "name": att.name,
        "created_at": att.created_at,
        "expires_at": att.expires_at,
        "revoked": entry.revoked,
        "this_device": entry.this_device,
    })
}

pub async fn run(ctx: &Ctx, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Link {
            name,
            finish: None,
            force,
        } => {
            let passphrase = ctx.passphrase(true)?;
            let request =
                IdentityService::begin_link(&ctx.home, &passphrase, options(name, force))?;
            let code = request.encode();
            emit(
                ctx.json,
                json!({ "link_code": code, "device_public_key": request.device.to_hex(), "name": request.name }),
                || {
                    format!(
                        "link code for this device:\n\n{code}\n\non a device that holds your words run:\n  kith device approve {code}\nthen finish here with:\n  kith device link --finish APPROVAL_CODE"
                    )
                },
            );
        }
        DeviceCommand::Link {
            finish: Some(approval),
            ..
        } => {
            let passphrase = ctx.passphrase(false)?;
            let service = IdentityService::finish_link(&ctx.home, &passphrase, &approval)?;
            let info = service.show().await?;
            print_created(ctx, &info, None);
        }
        DeviceCommand::Approve {
            code,
            expires_in_days,
        } => {
            let request = LinkRequest::decode(&code)?;
            let expires_at =
                expires_in_days.map(|days| kith_identity::records::now() + days * 86_400);
            let approval = ctx
                .identity()
                .await?
                .approve_link(request, expires_at)
                .await?;
            let att = &approval.attestation;
            emit(
                ctx.json,
                json!({
                    "approval_code": approval.approval_code,
                    "device_public_key": att.device.to_hex(),
                    "name": att.name,
                    "expires_at": att.expires_at,
                }),
                || {
                    format!(
                        "approved device {} ({})\nfinish on the new device with:\n  kith device link --finish {}",
                        att.name,
                        att.device.to_hex(),
                        approval.approval_code
                    )
                },
            );
        }
        DeviceCommand::List => {
            let list = ctx.identity().await?.list_devices().await?;
            let devices: Vec<_> = list.devices.iter().map(entry_json).collect();
            emit(
                ctx.json,
                json!({ "devices": devices, "revocation_version": list.revocations.as_ref().map(|r| r.version) }),
                || {
                    list.devices
                        .iter()
                        .map(|d| {
                            format!(
                                "{} {:<20} {}  created {}{}",
                                if d.this_device { "*" } else { " " },
                                d.attestation.name,
                                d.attestation.device.to_hex(),
                                time(d.attestation.created_at),
                                if d.revoked { "  REVOKED" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        DeviceCommand::Revoke { device, reason } => {
            let client = ctx.identity().await?;
            let device = resolve_device(&client, &device).await?;
            let list = client.revoke_device(device, reason).await?;
            emit(
                ctx.json,
                json!({ "revoked": device.to_hex(), "revocation_version": list.version }),
                || {
                    format!(
                        "revoked {device} (revocation list version {})",
                        list.version
                    )
                },
            );
        }
    }
    Ok(())
}

/// A full hex key, or a unique prefix (at least 8 characters) of a listed device.
async fn resolve_device(
    client: &kith_identity::IdentityClient,
    text: &str,
) -> anyhow::Result<PublicKey> {
    let text = text.trim().to_ascii_lowercase();
    if text.len() == 64 {
        return Ok(PublicKey::from_hex(&text)?);
    }
    if text.len() < 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("device must be a hex public key or a prefix of at least 8 hex characters");
    }
    let list = client.list_devices().await?;
    let matches: Vec<_> = list
        .devices
        .iter()
        .filter(|d| d.attestation.device.to_hex().starts_with(&text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.attestation.device),
        [] => anyhow::bail!("no listed device starts with {text}"),
        _ => anyhow::bail!(
            "{} devices start with {text}; give more characters",
            matches.len()
        ),
    }
}
