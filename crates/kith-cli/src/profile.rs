//! `kith profile`: set this identity's signed profile, show one.

use std::path::PathBuf;

use anyhow::Context as _;
use kith_identity::ids::{parse_id, printable_id};
use kith_identity::records::{Profile, ProfileUpdate};
use serde_json::json;

use crate::context::Ctx;
use crate::output::{emit, time};

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Set fields of this identity's profile; fields not given keep their value.
    Set {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        bio: Option<String>,
        /// An avatar image; its BLAKE3 hash goes in the profile.
        #[arg(long)]
        avatar: Option<PathBuf>,
    },
    /// Show a profile: this identity's, or another's by id.
    Show { id: Option<String> },
}

fn profile_json(p: &Profile) -> serde_json::Value {
    json!({
        "id": printable_id(&p.identity),
        "identity_public_key": p.identity.to_hex(),
        "version": p.version,
        "display_name": p.display_name,
        "bio": p.bio,
        "avatar_hash": p.avatar_hash.map(hex::encode),
        "updated_at": p.updated_at,
        "signed_by_device": p.signer.device.to_hex(),
    })
}

fn profile_text(p: &Profile) -> String {
    format!(
        "{}\nname:    {}\nbio:     {}\navatar:  {}\nversion: {} (updated {})",
        printable_id(&p.identity),
        p.display_name,
        p.bio,
        p.avatar_hash.map(hex::encode).unwrap_or_else(|| "-".into()),
        p.version,
        time(p.updated_at)
    )
}

pub async fn run(ctx: &Ctx, cmd: ProfileCommand) -> anyhow::Result<()> {
    let client = ctx.identity().await?;
    let profile = match cmd {
        ProfileCommand::Set { name, bio, avatar } => {
            let current = match client.get_profile(None).await {
                Ok(p) => Some(p),
                Err(kith_identity::IdentityError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let avatar_hash = match avatar {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("read avatar {}", path.display()))?;
                    Some(*blake3::hash(&bytes).as_bytes())
                }
                None => current.as_ref().and_then(|p| p.avatar_hash),
            };
            let update = ProfileUpdate {
                display_name: name
                    .or_else(|| current.as_ref().map(|p| p.display_name.clone()))
                    .unwrap_or_default(),
                bio: bio
                    .or_else(|| current.as_ref().map(|p| p.bio.clone()))
                    .unwrap_or_default(),
                avatar_hash,
            };
            client.set_profile(update).await?
        }
        ProfileCommand::Show { id } => {
            let identity = id.as_deref().map(parse_id).transpose()?;
            client.get_profile(identity).await?
        }
    };
    emit(ctx.json, profile_json(&profile), || profile_text(&profile));
    Ok(())
}
