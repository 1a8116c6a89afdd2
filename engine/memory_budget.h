// How much memory this machine can still give, and the check made before any allocation whose
// size comes from a user's file: a header or a dataset.json must not be able to ask for terabytes
// and be granted them until the kernel's OOM killer ends the command without a word.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

namespace voxgrad::memory {

// Bytes that can be allocated now without swapping: /proc/meminfo's MemAvailable (sysconf's free
// pages where there is no /proc), lowered to what a cgroup memory limit (a container's) leaves.
std::uint64_t available_bytes();

// The product of `factors` (element counts and an element size), saturated at UINT64_MAX so that
// a file's absurd dims can never wrap to a small number; a negative factor counts as 0.
std::uint64_t saturating_product(std::initializer_list<std::int64_t> factors);

// a + b, saturated at UINT64_MAX.
std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b);

// "512 B", "1.5 KiB", "23.1 GiB", "13.8 TiB"; "more than 16 EiB" for a saturated count.
std::string format_bytes(std::uint64_t bytes);

// Throws voxgrad::InputError "WHAT would need SIZE (DETAIL), more than the SIZE this machine has
// available" when `bytes` exceed available_bytes(). `what` names the file and the cause
// ("CASE.nii.gz: resampling to the model's spacing (1, 1, 1) mm"); `detail` may be empty.
void check_fits(std::uint64_t bytes, const std::string& what, const std::string& detail = "");

}  // namespace voxgrad::memory
