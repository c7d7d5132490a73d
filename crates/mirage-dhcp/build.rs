//! The DHCP engine as a KVM guest (`--sandbox kvm`), embedded in the binary.
fn main() {
    mirage_kvm_build::build_image("guest-dhcp", &[]);
}
