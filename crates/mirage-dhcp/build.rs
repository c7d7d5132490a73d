//! The DHCP engine as a KVM guest (`--sandbox kvm`), embedded in the binary
//! (`mirage_sdk::guest_image!`), and the binary's layout by process
//! (`mirage_kvm_build::link_by_process`: the supervisor's code, the
//! tender's and the guest image in segments of their own).
fn main() {
    mirage_kvm_build::build_image("guest-dhcp", &[]);
    mirage_kvm_build::link_by_process();
}
