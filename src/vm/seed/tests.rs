use super::*;

fn spec<'a>(os: Os, user: &'a str, keys: &'a [String], id: &'a Identity) -> SeedSpec<'a> {
    SeedSpec {
        name: "paddock-0123abcd-vm1",
        os,
        user,
        authorized_keys: keys,
        ca_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/XDHqQ4zGgrAo2cLdmgWGXXbEazbp/V20Cd7HR/aap fleet-ca"),
        identity: id,
    }
}

fn keys() -> Vec<String> {
    vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmtq6S3jn5jCGgu2HRQqX0mJvXKgKn3Y0dGRrI5yXfz paddock".to_string()]
}

/// What a Linux guest's cloud-init gets: exactly this VM's host key, paddock's login key,
/// the CA and a principals file naming only this VM.
#[test]
fn linux_seed_snapshot() {
    let id = Identity::from_seed("paddock-0123abcd-vm1", [7; 32]);
    let keys = keys();
    let s = spec(Os::Linux, "root", &keys, &id);
    insta::assert_snapshot!("linux_user_data", user_data(&s).unwrap());
    insta::assert_snapshot!("linux_meta_data", meta_data(&s));
}

/// What cloudbase-init gets for a Windows image (NoCloud: the same `cidata` volume).
#[test]
fn windows_seed_snapshot() {
    let id = Identity::from_seed("paddock-0123abcd-vm1", [7; 32]);
    let keys = keys();
    let s = spec(Os::Windows, "Administrator", &keys, &id);
    insta::assert_snapshot!("windows_user_data", user_data(&s).unwrap());
    insta::assert_snapshot!("windows_meta_data", meta_data(&s));
}

#[test]
fn user_data_is_cloud_config_that_parses_and_names_only_this_principal() {
    let id = Identity::generate("paddock-0123abcd-vm2").unwrap();
    let keys = keys();
    let s = SeedSpec { name: "paddock-0123abcd-vm2", ..spec(Os::Linux, "root", &keys, &id) };
    let text = user_data(&s).unwrap();
    let body = text.strip_prefix("#cloud-config\n").expect("cloud-config header");
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["hostname"], "paddock-0123abcd-vm2");
    let files = doc["write_files"].as_array().unwrap();
    let principals = files.iter().find(|f| f["path"] == "/etc/ssh/auth_principals/root").unwrap();
    assert_eq!(principals["content"], "paddock-0123abcd-vm2\n");
    let public = doc["ssh_keys"]["ed25519_public"].as_str().unwrap();
    assert_eq!(PublicKey::from_openssh(public).unwrap().key_data(), id.public_key().key_data());
    let private = PrivateKey::from_openssh(doc["ssh_keys"]["ed25519_private"].as_str().unwrap()).unwrap();
    assert_eq!(private.public_key().key_data(), id.public_key().key_data());
    // Without a CA there is no certificate login at all.
    let no_ca = SeedSpec { ca_key: None, ..s };
    let text = user_data(&no_ca).unwrap();
    assert!(!text.contains("TrustedUserCAKeys") && !text.contains("auth_principals"), "{text}");
}

#[test]
fn two_identities_differ_and_debug_never_shows_the_private_key() {
    let a = Identity::generate("a").unwrap();
    let b = Identity::generate("b").unwrap();
    assert_ne!(a.public_key().key_data(), b.public_key().key_data());
    let shown = format!("{a:?}");
    assert!(shown.contains("ssh-ed25519 ") && !shown.contains("PRIVATE"), "{shown}");
}

/// A real ISO, read back with xorriso: label `cidata`, both files, mode 0600, no stage left.
#[tokio::test]
async fn write_makes_a_cidata_iso_with_both_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate("paddock-0123abcd-vm3").unwrap();
    let keys = keys();
    let s = SeedSpec { name: "paddock-0123abcd-vm3", ..spec(Os::Linux, "root", &keys, &id) };
    let iso = path_for(dir.path(), s.name);
    std::fs::create_dir_all(iso.parent().unwrap()).unwrap();
    write(&s, &iso).await.unwrap();
    assert_eq!(std::fs::metadata(&iso).unwrap().permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(iso.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("paddock-0123abcd-vm3-seed.iso")]);

    let pvd = std::process::Command::new("xorriso").args(["-indev"]).arg(&iso).args(["-pvd_info"]).output().unwrap();
    let info = String::from_utf8_lossy(&pvd.stdout).into_owned() + &String::from_utf8_lossy(&pvd.stderr);
    assert!(info.contains("Volume Id    : cidata"), "{info}");
    let out = dir.path().join("x");
    let st = std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(std::fs::read_to_string(out.join("user-data")).unwrap(), user_data(&s).unwrap());
    assert_eq!(std::fs::read_to_string(out.join("meta-data")).unwrap(), meta_data(&s));
}
