# Versions of the single-node cluster's parts (sourced by deploy/k8s/*.sh). Changing one builds it anew.
K8S_VERSION=${KILN_K8S_VERSION:-v1.34.4}
ETCD_VERSION=${KILN_ETCD_VERSION:-v3.6.4}
COREDNS_VERSION=${KILN_COREDNS_VERSION:-v1.15.0}
# Build pods' images (BuildKit rootless, crane) and the node's NetworkPolicy enforcer.
BUILDKIT_VERSION=${KILN_BUILDKIT_VERSION:-v0.29.0}
ROOTLESSKIT_VERSION=${KILN_ROOTLESSKIT_VERSION:-v2.3.6}
CRANE_VERSION=${KILN_CRANE_VERSION:-v0.22.1}  # github.com/google/go-containerregistry
KUBE_ROUTER_VERSION=${KILN_KUBE_ROUTER_VERSION:-v2.1.0}
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
K8S_TOOLS="${KILN_TOOLS:-/opt/kiln-tools}/k8s/$K8S_VERSION"
