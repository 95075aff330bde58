# Versions of the single-node cluster's parts (sourced by deploy/k8s/*.sh). Changing one builds it anew.
K8S_VERSION=${KILN_K8S_VERSION:-v1.34.4}
ETCD_VERSION=${KILN_ETCD_VERSION:-v3.6.4}
COREDNS_VERSION=${KILN_COREDNS_VERSION:-v1.15.0}
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
K8S_TOOLS="${KILN_TOOLS:-/opt/kiln-tools}/k8s/$K8S_VERSION"
