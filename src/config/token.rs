//! The token file: read through one descriptor, refused when others (or a
//! group other than the agent's) can read it, never printed.

use std::path::Path;

use super::ConfigError;

/// Whether a token file's mode and owning group leave it private enough:
/// nothing for others, and group read (never group write) only when the
/// group is this process's own (a Kubernetes secret mounted with `fsGroup`
/// arrives as 0440 with the pod's group; kubernetes issue 57923).
fn token_mode_is_private(mode: u32, file_gid: u32, own_gid: Option<u32>) -> bool {
    let others = mode & 0o007;
    let group = mode & 0o070;
    others == 0 && (group == 0 || (group == 0o040 && Some(file_gid) == own_gid))
}

/// Whether `path` lies in this service's systemd credential store
/// (`$CREDENTIALS_DIRECTORY`): a directory only the service can read, whose
/// files systemd may hand to a dynamic user through an ACL, which shows as
/// group read bits with a group that is not the agent's. Group read is
/// accepted there; read for others is still refused.
fn in_credentials_directory(path: &Path, store: Option<std::ffi::OsString>) -> bool {
    let Some(store) = store else {
        return false;
    };
    let (Ok(store), Some(Ok(dir))) = (
        std::fs::canonicalize(store),
        path.parent().map(std::fs::canonicalize),
    ) else {
        return false;
    };
    dir == store
}

/// This process's effective group id, from `/proc/self/status` (the second
/// field of its `Gid:` line); `None` if that cannot be read.
fn effective_gid() -> Option<u32> {
    let gids = super::memory::proc_value("/proc/self/status", "Gid")?;
    gids.split_whitespace().nth(1)?.parse().ok()
}

/// Read the token through one descriptor: the mode and group are checked
/// on the file that is read, not on a path that could change in between.
///
/// Returns the token and whether the file was accepted only because
/// `allow_insecure_token_file` is set.
pub(super) fn read_token(path: &Path, allow_insecure: bool) -> Result<(String, bool), ConfigError> {
    read_token_with_store(
        path,
        allow_insecure,
        std::env::var_os("CREDENTIALS_DIRECTORY"),
    )
}

/// [`read_token`] with the credential store given (`$CREDENTIALS_DIRECTORY`).
fn read_token_with_store(
    path: &Path,
    allow_insecure: bool,
    store: Option<std::ffi::OsString>,
) -> Result<(String, bool), ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let token_error = |source| ConfigError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(token_error)?;
    let metadata = file.metadata().map_err(token_error)?;
    let mode = metadata.mode() & 0o777;
    let own_gid = effective_gid();
    let private = token_mode_is_private(mode, metadata.gid(), own_gid)
        || (mode & 0o027 == 0 && in_credentials_directory(path, store));
    if !allow_insecure && !private {
        return Err(ConfigError::InsecureTokenFile {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(token_error)?;
    let token = text.trim_end_matches(['\n', '\r']).to_owned();
    if token.is_empty() {
        return Err(ConfigError::EmptyTokenFile {
            path: path.to_owned(),
        });
    }
    Ok((token, !private))
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1` (brackets allowed):
/// a host a token may be sent to over cleartext tcp://.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::super::{Config, Settings};
    use super::*;

    #[test]
    fn token_files_must_be_private_and_the_token_is_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "hunter2-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut flags = args(Some("tcp://127.0.0.1:1"));
        flags.token_file = Some(path.clone());
        let err = Config::merge(&flags, Settings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by others"), "{err}");
        flags.allow_insecure_token_file = Some(true);
        let config = Config::merge(&flags, Settings::default()).unwrap();
        assert_eq!(config.token.as_deref(), Some("hunter2-secret"));
        let warnings = config.warnings();
        assert!(
            warnings.len() == 1 && warnings[0].contains("allow_insecure_token_file"),
            "{warnings:?}"
        );
        assert!(!config.effective_toml().contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        flags.allow_insecure_token_file = Some(false);
        assert!(Config::merge(&flags, Settings::default())
            .unwrap()
            .warnings()
            .is_empty());
        // A flag or variable saying false beats the file saying true.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = Settings {
            allow_insecure_token_file: Some(true),
            ..Settings::default()
        };
        assert!(Config::merge(&flags, file.clone()).is_err());
        flags.allow_insecure_token_file = None;
        assert!(Config::merge(&flags, file).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_readable_by_the_agents_own_group_is_accepted_at_0440() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("rw-token-0440-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let own_gid = effective_gid().expect("/proc/self/status has a Gid line");
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), own_gid);
        let mut flags = args(Some("tcp://h:1"));
        flags.token_file = Some(path.clone());
        let with_mode = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Config::merge(&flags, Settings::default())
        };
        // The kubelet's fsGroup mount: 0440, group = the pod's (our) group.
        assert_eq!(with_mode(0o440).unwrap().token.as_deref(), Some("s3cret"));
        assert!(with_mode(0o400).is_ok());
        // Anything for others, or group write, stays refused.
        for mode in [0o644, 0o444, 0o460, 0o404] {
            let err = with_mode(mode).unwrap_err().to_string();
            assert!(err.contains("readable by others"), "mode {mode:o}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_read_is_private_only_for_the_agents_own_group() {
        assert!(token_mode_is_private(0o440, 1000, Some(1000)));
        assert!(!token_mode_is_private(0o440, 1000, Some(1001)));
        assert!(!token_mode_is_private(0o440, 1000, None));
        assert!(token_mode_is_private(0o600, 1000, Some(1001)));
        assert!(!token_mode_is_private(0o604, 1000, Some(1000)));
        assert!(!token_mode_is_private(0o640 | 0o020, 1000, Some(1000)));
    }

    #[test]
    fn a_token_over_cleartext_tcp_to_another_host_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rw-token-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let warnings_for = |manager: &str| {
            let mut flags = args(Some(manager));
            flags.token_file = Some(path.clone());
            Config::merge(&flags, Settings::default())
                .unwrap()
                .warnings()
        };
        let far = warnings_for("tcp://manager.example:7000");
        assert!(far.len() == 1 && far[0].contains("clear text"), "{far:?}");
        for near in [
            "tcp://127.0.0.1:7000",
            "tcp://127.1.2.3:7000",
            "tcp://[::1]:7000",
            "tcp://localhost:7000",
            "unix:///run/manager.sock",
        ] {
            assert!(warnings_for(near).is_empty(), "{near}");
        }
        // No token, nothing to warn about.
        let config = Config::merge(
            &args(Some("tcp://manager.example:7000")),
            Settings::default(),
        )
        .unwrap();
        assert!(config.warnings().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_credential_readable_through_a_group_acl_is_accepted_only_in_the_store() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let store = std::env::temp_dir().join(format!("rw-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let path = store.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        // As systemd leaves a credential granted by ACL: 0440, another group.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let other_gid = 65534;
        std::os::unix::fs::chown(&path, None, Some(other_gid)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), other_gid);
        let store_var = Some(store.clone().into_os_string());
        assert!(in_credentials_directory(&path, store_var.clone()));
        assert!(!in_credentials_directory(&path, None));
        let elsewhere = Some(std::env::temp_dir().into_os_string());
        assert!(!in_credentials_directory(&path, elsewhere));
        // Read as the agent reads it: accepted in the store, refused
        // outside it (the group is not ours), and 0444 refused in it too.
        let (token, insecure) = read_token_with_store(&path, false, store_var.clone()).unwrap();
        assert_eq!((token.as_str(), insecure), ("s3cret", false));
        let err = read_token_with_store(&path, false, None).unwrap_err();
        assert!(
            matches!(err, ConfigError::InsecureTokenFile { .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = read_token_with_store(&path, false, store_var).unwrap_err();
        assert!(
            matches!(err, ConfigError::InsecureTokenFile { .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&store).unwrap();
    }
}
