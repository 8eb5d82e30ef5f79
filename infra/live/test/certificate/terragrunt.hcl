include "root" {
  path = find_in_parent_folders("root.hcl")
}

# Everything but the environment (env.hcl) is shared: see _envcommon/certificate.hcl.
include "envcommon" {
  path           = "${dirname(find_in_parent_folders("root.hcl"))}/_envcommon/certificate.hcl"
  expose         = true
  merge_strategy = "deep"
}
