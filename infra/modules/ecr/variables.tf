variable "name" {
  description = "Name prefix of the repositories (e.g. qa-test gives qa-test/ray-cpu)."
  type        = string
}

variable "repositories" {
  description = "Repository suffixes to create (one per Ray image flavour)."
  type        = list(string)
  default     = ["ray-cpu", "ray-gpu"]
}

variable "keep_tagged_images" {
  description = "How many release images to keep per repository."
  type        = number
  default     = 30
}

variable "force_delete" {
  description = "Allow destroying repositories that still hold images (throw-away environments only)."
  type        = bool
  default     = false
}
