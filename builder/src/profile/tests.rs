use std::path::Path;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"
[image]
version = "1.0"

[archive]
url = "https://deb.debian.org/debian/"
suite = "bookworm"
keyring = "keys/debian.pgp"

[kernel]
package = "linux-image-cloud-amd64"
cmdline = ["console=ttyS0", "quiet"]
initrd_modules = ["virtio_blk"]

[bootloader]
package = "systemd-boot-efi"

[[components]]
name = "busybox"
package = "busybox-static"
files = [{ src = "bin/busybox" }]

[[files]]
path = "/etc/motd"
content = "hello"
"#;

#[test]
fn loads_a_profile_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let p = load(&write(d.path(), "base.toml", BASE)).unwrap();
    assert_eq!(p.name, "base");
    assert_eq!(p.version, "1.0");
    assert_eq!(p.source_date_epoch, validate::DEFAULT_SOURCE_DATE_EPOCH);
    let a = p.archive.unwrap();
    assert_eq!(a.url, "https://deb.debian.org/debian");
    assert_eq!(a.components, vec!["main"]);
    assert_eq!(a.keyring, d.path().join("keys/debian.pgp"));
    assert_eq!(p.kernel.source, Source::Package("linux-image-cloud-amd64".into()));
    assert_eq!(
        p.partitions,
        PartitionSizes {
            esp: 512 << 20,
            root: 1 << 30,
            var: 64 << 20
        }
    );
    assert_eq!(
        p.components[0].files.as_ref().unwrap()[0].dst,
        Path::new("/bin/busybox")
    );
    assert_eq!(p.files[0].mode, 0o644);
}

#[test]
fn unknown_key_is_rejected_with_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let text = BASE.replace("suite = \"bookworm\"", "suite = \"bookworm\"\nsuit = \"x\"");
    let path = write(d.path(), "bad.toml", &text);
    let msg = load(&path).unwrap_err().to_string();
    assert!(msg.contains("bad.toml"), "{msg}");
    assert!(msg.contains("unknown field `suit`"), "{msg}");
    assert!(msg.contains("line 8"), "{msg}");
}

#[test]
fn extends_merges_by_the_documented_rules() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    let child = write(
        d.path(),
        "child.toml",
        r#"
extends = "base"
[image]
version = "2.0"
[kernel]
cmdline = ["panic=-1"]
initrd_modules = []
[partitions]
root = "256M"
[[components]]
name = "busybox"
path = "local/busybox.deb"
[[components]]
name = "extra"
url = "https://example.org/x.tar.gz"
sha256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
"#,
    );
    let p = load(&child).unwrap();
    assert_eq!(p.name, "child");
    assert_eq!(p.version, "2.0", "scalars: child wins");
    assert_eq!(
        p.kernel.cmdline,
        ["console=ttyS0", "quiet", "panic=-1"],
        "lists append"
    );
    assert!(p.kernel.initrd_modules.is_empty(), "explicit empty list resets");
    assert_eq!(
        p.kernel.source,
        Source::Package("linux-image-cloud-amd64".into()),
        "untouched tables stay"
    );
    assert_eq!(p.partitions.root, 256 << 20);
    assert_eq!(p.partitions.esp, 512 << 20);
    assert_eq!(p.components.len(), 2);
    assert_eq!(p.components[0].name, "busybox", "same name replaces in place");
    assert_eq!(
        p.components[0].source,
        Source::Path(d.path().join("local/busybox.deb"))
    );
    assert_eq!(
        p.components[0].files, None,
        "a replaced component does not keep the base's fields"
    );
    assert_eq!(
        p.components[1].source,
        Source::Url {
            url: "https://example.org/x.tar.gz".into(),
            sha256: "a".repeat(64)
        }
    );
    assert_eq!(p.files.len(), 1, "files inherited");
}

#[test]
fn extends_cycles_are_reported() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "extends = \"b\"");
    write(d.path(), "b.toml", "extends = \"a\"");
    let err = load(&d.path().join("a.toml")).unwrap_err();
    assert!(matches!(err, ProfileError::ExtendsCycle { .. }), "{err}");
}

#[test]
fn bad_values_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (BASE.replace("version = \"1.0\"", "version = \"1.0+x\""), "image.version"),
        (BASE.replace("version = \"1.0\"", "version = \"-1\""), "empty upstream part"),
        (BASE.replace("[partitions]", "") + "[partitions]\nroot = \"100.5M\"\n", "partitions.root"),
        (BASE.to_string() + "[partitions]\nvar = 1000\n", "partitions.var"),
        (BASE.replace("package = \"systemd-boot-efi\"", "url = \"https://x/y\""), "bootloader.sha256"),
        (BASE.replace("package = \"systemd-boot-efi\"", "package = \"a\"\npath = \"b\""), "bootloader"),
        (BASE.replace("path = \"/etc/motd\"", "path = \"etc/motd\""), "files[0].path"),
        (BASE.replace("name = \"busybox\"", "name = \"kernel\""), "components[0].name"),
        (BASE.replace("src = \"bin/busybox\"", "src = \"../etc/shadow\""), "components[0].files[0].src"),
        (BASE.replace("[archive]", "[unused]").replace("url = \"https://deb.debian.org/debian/\"\nsuite = \"bookworm\"\nkeyring = \"keys/debian.pgp\"", "x = 1"), "unused"),
    ];
    for (text, field) in cases {
        let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
        assert!(msg.contains(field), "expected {field} in: {msg}");
    }
}

#[test]
fn locate_finds_names_and_paths() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "minimal.toml", BASE);
    assert_eq!(locate("minimal", d.path()).unwrap(), p);
    assert_eq!(locate(p.to_str().unwrap(), Path::new("/nonexistent")).unwrap(), p);
    let msg = locate("nope", d.path()).unwrap_err().to_string();
    assert!(msg.contains("nope.toml"), "{msg}");
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12X").is_err());
    assert!(parse_size("99999999999999T").is_err());
}

const IMAGES: &str = r#"
[[components]]
name = "busybox-image"
package = "busybox-static"
install = false
files = [{ src = "bin/busybox" }]

[[images]]
name = "ingot.local/busybox:latest"
from = "busybox-image"
entrypoint = ["/bin/busybox"]
cmd = ["sh"]
env = { PATH = "/bin" }

[[images]]
name = "registry.k8s.io/pause:3.6"
namespace = "default"
path = "images/pause.tar"
"#;

#[test]
fn images_load_and_merge_by_name() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", &(BASE.to_string() + IMAGES));
    let p = load(&d.path().join("base.toml")).unwrap();
    assert!(p.components[0].install, "install defaults to true");
    assert!(!p.components[1].install);
    assert_eq!(p.images.len(), 2);
    assert_eq!(p.images[0].namespace, "k8s.io", "default namespace");
    assert_eq!(
        p.images[0].source,
        ImageSource::Component {
            component: "busybox-image".into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: [("PATH".to_string(), "/bin".to_string())].into(),
        }
    );
    assert_eq!(
        p.images[1].source,
        ImageSource::Archive(Source::Path(d.path().join("images/pause.tar"))),
        "paths are relative to the profile"
    );

    std::fs::create_dir(d.path().join("site")).unwrap();
    let child = write(
        &d.path().join("site"),
        "child.toml",
        r#"
extends = "../base.toml"
[[images]]
name = "registry.k8s.io/pause:3.6"
url = "https://example.org/pause.tar"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[images]]
name = "ingot.local/extra:1"
path = "extra.tar"
"#,
    );
    let p = load(&child).unwrap();
    let names: Vec<&str> = p.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ingot.local/busybox:latest",
            "registry.k8s.io/pause:3.6",
            "ingot.local/extra:1"
        ]
    );
    assert_eq!(
        p.images[1].namespace, "k8s.io",
        "a replaced image does not keep the base's fields"
    );
    assert!(matches!(
        &p.images[1].source,
        ImageSource::Archive(Source::Url { .. })
    ));
    assert_eq!(
        p.images[2].source,
        ImageSource::Archive(Source::Path(d.path().join("site/extra.tar")))
    );
}

#[test]
fn bad_images_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let base = BASE.to_string() + IMAGES;
    let cases = [
        (base.replace("ingot.local/busybox:latest", "busybox"), "images[0].name", "no tag"),
        (base.replace("ingot.local/busybox:latest", "busybox:latest"), "images[0].name", "names no registry"),
        (base.replace("from = \"busybox-image\"", "from = \"nope\""), "images[0].from", "busybox-image"),
        (base.replace("namespace = \"default\"", "namespace = \"a/b\""), "images[1].namespace", "letters"),
        (base.replace("path = \"images/pause.tar\"", "path = \"x\"\nfrom = \"busybox-image\""), "images[1]", "more than one source"),
        (base.replace("path = \"images/pause.tar\"", "path = \"x\"\ncmd = [\"x\"]"), "images[1]", "only apply to images built `from`"),
        (base.replace("path = \"images/pause.tar\"", ""), "images[1]", "needs a source"),
        (base.replace("path = \"images/pause.tar\"", "url = \"https://x/y.tar\""), "images[1].sha256", "is required"),
        (base.replace("registry.k8s.io/pause:3.6", "ingot.local/busybox:latest"), "images[1].name", "declared twice"),
        (
            base.replace("ingot.local/busybox:latest", "ingot.local/a_b:c").replace("registry.k8s.io/pause:3.6", "ingot.local/a:b_c"),
            "images[1].name",
            "would both be stored as ingot.local_a_b_c.tar",
        ),
        (base.replace("env = { PATH = \"/bin\" }", "env = { \"A=B\" = \"x\" }"), "images[0].env", "not a variable name"),
        (
            base.replace(
                "from = \"busybox-image\"\nentrypoint = [\"/bin/busybox\"]\ncmd = [\"sh\"]\nenv = { PATH = \"/bin\" }",
                "path = \"x.tar\"",
            ),
            "components[1].install",
            "not installed",
        ),
        (
            base.replace("install = false\n", "install = false\ndepends = true\n"),
            "components[1].depends",
            "staged into the root",
        ),
    ];
    for (text, field, why) in cases {
        let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
        assert!(
            msg.contains(field) && msg.contains(why),
            "expected {field} / {why} in: {msg}"
        );
    }
}

#[test]
fn a_profile_parsed_from_text_is_the_one_loaded_from_its_file() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "base.toml", BASE);
    assert_eq!(parse_str(&p, BASE).unwrap(), load(&p).unwrap());
    let child = "extends = \"base\"\n";
    let c = write(d.path(), "child.toml", child);
    assert!(load(&c).is_ok());
    let e = parse_str(&c, child).unwrap_err();
    assert!(e.to_string().contains("cannot extend another"), "{e}");
    assert!(matches!(
        parse_str(&p, "[image\n"),
        Err(ProfileError::Parse { .. })
    ));
}

const APT: &str = r#"
[base.apt]
mirror = "http://archive.ubuntu.com/ubuntu/"
suite = "noble"
extra_suites = ["noble-updates"]
components = ["main", "universe"]
keyring = "keys/ubuntu.pgp"
packages = ["linux-image-generic", "containerd"]
"#;

#[test]
fn an_apt_base_validates_and_gives_the_kernel() {
    let d = tempfile::tempdir().unwrap();
    let text = BASE.replace("package = \"linux-image-cloud-amd64\"", "from = \"base\"") + APT;
    let p = load(&write(d.path(), "apt.toml", &text)).unwrap();
    let base = p.base.unwrap();
    assert_eq!(base.archive.url, "http://archive.ubuntu.com/ubuntu");
    assert_eq!(base.archive.suite, "noble");
    assert_eq!(base.extra_suites, ["noble-updates"]);
    assert_eq!(base.archive.components, ["main", "universe"]);
    assert_eq!(base.archive.arch, "amd64");
    assert_eq!(base.archive.keyring, d.path().join("keys/ubuntu.pgp"));
    assert_eq!(base.packages, ["linux-image-generic", "containerd"]);
    assert_eq!(p.kernel.source, Source::Base);
}

#[test]
fn apt_base_mistakes_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let from_base = BASE.replace("package = \"linux-image-cloud-amd64\"", "from = \"base\"");
    for (text, field, says) in [
        (from_base.clone(), "kernel.from", "needs a [base.apt] table"),
        (
            BASE.replace(
                "package = \"linux-image-cloud-amd64\"",
                "from = \"base\"\npackage = \"x\"",
            ) + APT,
            "kernel.from",
            "drop `package`",
        ),
        (
            BASE.replace("package = \"linux-image-cloud-amd64\"", "from = \"apt\"") + APT,
            "kernel.from",
            "not a kernel source",
        ),
        (
            from_base.clone()
                + &APT.replace(
                    "packages = [\"linux-image-generic\", \"containerd\"]",
                    "packages = []",
                ),
            "base.apt.packages",
            "lists no package",
        ),
        (
            from_base.clone() + &APT.replace("\"containerd\"]", "\"containerd\", \"containerd\"]"),
            "base.apt.packages[2]",
            "listed twice",
        ),
        (
            from_base.clone() + &APT.replace("\"containerd\"]", "\"Containerd\"]"),
            "base.apt.packages[1]",
            "not a package name",
        ),
        (
            from_base.clone() + &APT.replace("suite = \"noble\"", "suite = \"noble main\""),
            "base.apt.suite",
            "not a suite name",
        ),
        (
            from_base.clone() + &APT.replace("[\"noble-updates\"]", "[\"noble\"]"),
            "base.apt.extra_suites[0]",
            "named twice",
        ),
        (
            from_base.clone() + &APT.replace("http://archive", "ftp://archive"),
            "base.apt.mirror",
            "not an http(s) URL",
        ),
        (
            from_base.clone() + &APT.replace("keyring = \"keys/ubuntu.pgp\"\n", ""),
            "base.apt.keyring",
            "is required",
        ),
        (from_base.clone() + "\n[base]\n", "base", "needs an `apt` table"),
    ] {
        let err = load(&write(d.path(), "bad.toml", &text)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("field `{field}`")) && err.contains(says),
            "{field}: {err}"
        );
    }
}

#[test]
fn a_child_replaces_the_base_table_and_may_take_its_kernel_from_it() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", BASE);
    let child = format!("extends = \"base\"\n[kernel]\nfrom = \"base\"\n{APT}");
    let p = load(&write(d.path(), "child.toml", &child)).unwrap();
    assert_eq!(p.kernel.source, Source::Base, "from replaces the base's package");
    assert_eq!(
        p.kernel.cmdline,
        ["console=ttyS0", "quiet"],
        "the rest of [kernel] still merges"
    );
    assert!(p.base.is_some());
    // And back: a grandchild naming a package replaces `from`.
    let grandchild = "extends = \"child\"\n[kernel]\npackage = \"linux-image-amd64\"\n";
    let p = load(&write(d.path(), "grandchild.toml", grandchild)).unwrap();
    assert_eq!(p.kernel.source, Source::Package("linux-image-amd64".into()));
}
