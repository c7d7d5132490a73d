fn main() {
    mirage_kvm_build::build_image("guest-heartbeat", &[]);
    if std::env::var_os("CARGO_FEATURE_HOSTILE").is_some() {
        mirage_kvm_build::build_image("guest-hostile", &["hostile"]);
    }
}
