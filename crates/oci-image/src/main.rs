//! `oci-image`: write a MirageSDK service's container image (mirage-dhcp,
//! mirage-ntp, mirage-dns) as an OCI image layout (and optionally an oci-archive) from
//! a built static binary, without a container engine. Same inputs, same
//! digest; see deploy/build-image.sh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "oci-image",
    version,
    about = "Reproducible OCI image of a MirageSDK service (mirage-dhcp, mirage-ntp, mirage-dns)"
)]
struct Args {
    /// The service: mirage-dhcp, mirage-ntp or mirage-dns (its user,
    /// capabilities, binds, limits and labels).
    #[arg(long, value_parser = parse_service)]
    service: oci_image::Service,
    /// The service's static executable to put in the image.
    #[arg(long)]
    binary: PathBuf,
    /// Output directory for the OCI image layout (absent or empty).
    #[arg(long)]
    out: PathBuf,
    /// Also pack the layout as an oci-archive tar at this path.
    #[arg(long)]
    archive: Option<PathBuf>,
    /// org.opencontainers.image.version and the tag [default: this crate's version].
    #[arg(long)]
    image_version: Option<String>,
    /// org.opencontainers.image.source [default: the workspace repository].
    #[arg(long)]
    source: Option<String>,
    /// org.opencontainers.image.revision (the commit the binary was built from).
    #[arg(long)]
    revision: String,
    /// Store the layer as a plain tar instead of gzip (fast local builds).
    #[arg(long)]
    uncompressed: bool,
    /// Seconds since the epoch for `created` (reads SOURCE_DATE_EPOCH when unset).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
}

fn parse_service(name: &str) -> Result<oci_image::Service, String> {
    oci_image::Service::named(name).ok_or_else(|| {
        let known: Vec<&str> = oci_image::SERVICES.iter().map(|s| s.name).collect();
        format!("unknown service {name:?}: one of {}", known.join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let binary = std::fs::read(&args.binary).map_err(|e| format!("{}: {e}", args.binary.display()))?;
    let meta = oci_image::Meta {
        version: args
            .image_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
        source: args
            .source
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_REPOSITORY").to_owned()),
        revision: args.revision.clone(),
        created: args.source_date_epoch,
    };
    let image = oci_image::image(&args.service, binary, &meta).map_err(|e| e.to_string())?;
    let compression = if args.uncompressed {
        oci_image::LayerCompression::None
    } else {
        oci_image::LayerCompression::Gzip
    };
    let written = oci_image::write_layout(&image, &args.out, compression).map_err(|e| e.to_string())?;
    if let Some(path) = &args.archive {
        let bytes = oci_image::archive_layout(&args.out).map_err(|e| e.to_string())?;
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("digest {}", written.manifest_digest);
    println!("image-id {}", written.config_digest);
    println!(
        "layer {} bytes compressed, {} bytes unpacked",
        written.layer_size, written.unpacked_size
    );
    println!("tag {}", image.tag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let base = ["oci-image", "--binary", "b", "--out", "o"];
        let with = |extra: &[&'static str]| Args::try_parse_from(base.iter().chain(extra));
        let a = with(&["--service", "mirage-ntp", "--revision", "r"]).unwrap();
        assert_eq!(a.revision, "r");
        assert_eq!(a.service, oci_image::MIRAGE_NTP);
        let a = with(&["--service", "mirage-dns", "--revision", "r"]).unwrap();
        assert_eq!(a.service, oci_image::MIRAGE_DNS);
        assert!(with(&["--service", "mirage-dhcp"]).is_err(), "no --revision");
        assert!(with(&["--revision", "r"]).is_err(), "no --service");
        let e = with(&["--service", "chrony", "--revision", "r"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of mirage-dhcp, mirage-ntp, mirage-dns"), "{e}");
    }
}
