//! Builds the startup snapshot: every isolate starts from a V8 heap in which
//! Deno's Web APIs and churn's request loop are already loaded.
//!
//! The extension list comes from `src/extensions.rs`, the same function the
//! live runtime calls.
#![allow(dead_code)]

#[path = "src/invocation.rs"]
mod invocation;

#[path = "src/ext/mod.rs"]
mod ext;

#[path = "src/sockets.rs"]
mod sockets;

#[path = "src/extensions.rs"]
mod extensions;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use deno_core::ExtensionFileSourceCode;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=js");
    println!("cargo:rerun-if-changed=src/ext");
    println!("cargo:rerun-if-changed=src/extensions.rs");
    println!("cargo:rerun-if-changed=src/invocation.rs");

    // Every lazily loaded script of every extension, to find the ones the
    // snapshot did not consume (their source must then ship in the binary).
    let mut lazy: Vec<(String, String, bool)> = Vec::new();
    for ext in extensions::extensions() {
        for (files, is_esm) in [
            (ext.get_lazy_loaded_esm_sources(), true),
            (&*ext.lazy_loaded_js_files, false),
        ] {
            for file in files {
                #[allow(deprecated)]
                let path = match &file.code {
                    ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(path) => path.to_string(),
                    _ => continue,
                };
                lazy.push((file.specifier.to_string(), path, is_esm));
            }
        }
    }

    let output = deno_core::snapshot::create_snapshot(
        deno_core::snapshot::CreateSnapshotOptions {
            cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
            startup_snapshot: None,
            skip_op_registration: false,
            extensions: extensions::extensions(),
            extension_transpiler: None,
            with_runtime_cb: None,
        },
        None,
    )
    .expect("creating the startup snapshot");

    for path in &output.files_loaded_during_snapshot {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    std::fs::write(out_dir.join("CHURN_SNAPSHOT.bin"), &output.output).expect("writing snapshot");

    let consumed: BTreeSet<&str> = output
        .consumed_lazy_specifiers
        .iter()
        .map(String::as_str)
        .collect();
    // deno_core binary-searches these tables.
    lazy.sort();
    let mut js = String::from("pub static RESIDUAL_LAZY_JS: &[(&str, &str)] = &[\n");
    let mut esm = String::from("pub static RESIDUAL_LAZY_ESM: &[(&str, &str)] = &[\n");
    for (specifier, path, is_esm) in &lazy {
        if consumed.contains(specifier.as_str()) {
            continue;
        }
        let target = if *is_esm { &mut esm } else { &mut js };
        writeln!(target, "    ({specifier:?}, include_str!({path:?})),").expect("string write");
    }
    js.push_str("];\n");
    esm.push_str("];\n");
    std::fs::write(out_dir.join("residual.rs"), js + &esm).expect("writing residual table");
}
