//! Where the keystore passphrase comes from: a file (a docker secret), `KITH_PASSPHRASE`, or an
//! interactive prompt, in that order.

use std::path::Path;

use zeroize::Zeroizing;

use crate::keystore::Passphrase;

/// Reads the passphrase. `file` is an explicit `--passphrase-file`; `KITH_PASSPHRASE_FILE` is the
/// same from the environment. With `confirm`, a prompt asks twice (used when creating a keystore).
pub fn read_passphrase(file: Option<&Path>, confirm: bool) -> Result<Passphrase, String> {
    let env_file = std::env::var_os("KITH_PASSPHRASE_FILE").filter(|v| !v.is_empty());
    if let Some(path) = file.map(Path::to_path_buf).or(env_file.map(Into::into)) {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("read passphrase file {}: {e}", path.display()))?,
        );
        let pass = text.strip_suffix('\n').unwrap_or(&text);
        let pass = pass.strip_suffix('\r').unwrap_or(pass);
        return non_empty(Zeroizing::new(pass.to_owned()));
    }
    if let Ok(pass) = std::env::var("KITH_PASSPHRASE") {
        return non_empty(Zeroizing::new(pass));
    }
    // The prompt reads the controlling terminal, so words or data may still arrive on stdin.
    let no_terminal = |e: std::io::Error| {
        format!(
            "no passphrase: set KITH_PASSPHRASE or KITH_PASSPHRASE_FILE, or run in a terminal ({e})"
        )
    };
    let pass =
        Zeroizing::new(rpassword::prompt_password("keystore passphrase: ").map_err(no_terminal)?);
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("repeat passphrase: ")
                .map_err(|e| format!("read passphrase: {e}"))?,
        );
        if *again != *pass {
            return Err("passphrases do not match".into());
        }
    }
    non_empty(pass)
}

fn non_empty(pass: Passphrase) -> Result<Passphrase, String> {
    if pass.is_empty() {
        Err("keystore passphrase must not be empty".into())
    } else {
        Ok(pass)
    }
}
