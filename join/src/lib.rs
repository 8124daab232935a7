//! Joining a node to a Kubernetes cluster the way `kubeadm join` does, without kubeadm.
//!
//! The node holds a bootstrap token (`<id>.<secret>`) and, normally, one or more CA pins
//! (`sha256:<hex>` of the cluster CA's public key). [`discovery::discover`] turns those into a trusted
//! cluster CA and API server address:
//!
//! 1. fetch `kube-public/cluster-info` anonymously without verifying TLS (nothing is trusted yet),
//!    polling until the controller-manager has signed it for this token id;
//! 2. check the detached JWS over its `kubeconfig` with the token secret ([`jws`]): only someone who
//!    knows the token could have signed it;
//! 3. parse that kubeconfig ([`kubeconfig`]) and require one of its CA certificates to match a pin
//!    ([`pin`]): the token alone is shared by every joining node, the pin is not forgeable;
//! 4. fetch cluster-info again over TLS verified with that CA ([`https`]) and require the same bytes.
//!
//! Then the kubelet gets a bootstrap kubeconfig ([`kubeconfig::bootstrap_kubeconfig`], written with
//! [`files::write_private`]) and does its own TLS bootstrap; [`node_status::node_ready`] asks the API
//! server, with the kubelet's client certificate, whether the node is Ready; [`files::wipe`] removes the
//! bootstrap kubeconfig (and so the token) once the kubelet has its certificate.
//!
//! The token secret is never formatted: errors and progress messages name the token id only.
//!
//! Runs in a child process of PID 1 (`ingot-init join`), so blocking I/O is fine, but the same rules hold:
//! no panics, no name resolution (hosts are IP addresses; the resolver refuses anything else).
//!
//! Left to others: the kubelet's own TLS bootstrap (CSR, approval, certificate rotation) and everything
//! kubeadm does on control-plane nodes.

pub mod discovery;
pub mod files;
pub mod https;
pub mod jws;
pub mod kubeconfig;
pub mod node_status;
pub mod pin;

pub use discovery::{Discovered, DiscoveryError, DiscoveryOptions, discover};
pub use https::HttpOptions;
pub use node_status::{NodeReadiness, node_ready};
