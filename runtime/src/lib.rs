//! bramble-runtime: the only code in bramble that speaks to containerd, CNI and cgroups.
