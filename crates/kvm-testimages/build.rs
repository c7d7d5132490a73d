fn main() {
    mirage_kvm_build::build_image("guest-heartbeat", &[]);
    mirage_kvm_build::build_image("guest-dhcp", &[]);
    mirage_kvm_build::build_image("guest-ntp", &[]);
    mirage_kvm_build::build_image("guest-relay", &[]);
    if std::env::var_os("CARGO_FEATURE_HOSTILE").is_some() {
        mirage_kvm_build::build_image("guest-hostile", &["hostile"]);
    }
}
