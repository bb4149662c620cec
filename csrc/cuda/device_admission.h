// Feature admission of the device store, the host side: which unique ids of a training
// batch may become rows. The decisions are the front's (DeviceCollectionImpl::AdmitHook, the
// CPU engine's table/admission filter); this only maps them onto the batch's unique ids.
// Host code, no kernels; included by device_collection.cu only.
#pragma once

#include <cstdint>
#include <unordered_set>
#include <vector>

#include "device_collection_impl.h"

namespace sparsecore::cuda {

// A batch's groups as admission sees them: per group its table and the bounds of its unique
// ids (G + 1, host), and per table whether it has admission.
struct AdmissionLayout {
  const std::vector<char>& refusing;    // per table
  const std::vector<int>& group_table;  // per group
  const std::vector<int64_t>& begin;    // (G + 1) unique bounds

  bool any() const {
    for (int t : group_table)
      if (refusing[t]) return true;
    return false;
  }

  // Per unique id (unique order, at least one entry): 1 when it may be inserted. Ids of
  // tables without admission always may; those of the others when admitted(u).
  template <typename Admitted>
  std::vector<unsigned char> mask(const Admitted& admitted) const {
    std::vector<unsigned char> out(static_cast<size_t>(begin.back() > 0 ? begin.back() : 1), 1);
    for (size_t g = 0; g < group_table.size(); ++g) {
      if (!refusing[group_table[g]]) continue;
      for (int64_t u = begin[g]; u < begin[g + 1]; ++u) out[u] = admitted(u) ? 1 : 0;
    }
    return out;
  }

  // The insert mask of a training prepare: keys and found (slot or -1) per unique id, host.
  // The hook sights the absent ids of each group of a table with admission, groups in order;
  // an id of one table in two groups is sighted by each group that still finds it absent, as
  // the CPU engine's planner does. absent_rows (per group) counts the ids left without a row.
  std::vector<unsigned char> admit(const std::vector<int64_t>& keys, const std::vector<int64_t>& found,
                                   const DeviceCollectionImpl::AdmitHook& hook,
                                   std::vector<int64_t>& absent_rows) const {
    std::vector<unsigned char> admitted(keys.size(), 0);
    std::vector<std::unordered_set<int64_t>> made(refusing.size());
    absent_rows.assign(group_table.size(), 0);
    for (size_t g = 0; g < group_table.size(); ++g) {
      const int t = group_table[g];
      if (!refusing[t]) continue;
      std::vector<int64_t> absent, at;
      for (int64_t u = begin[g]; u < begin[g + 1]; ++u) {
        if (found[u] >= 0 || made[t].count(keys[u])) {
          admitted[u] = 1;
        } else {
          absent.push_back(keys[u]);
          at.push_back(u);
        }
      }
      std::vector<unsigned char> verdict(absent.size(), 0);
      if (!absent.empty())
        hook(static_cast<int>(g), t, absent.data(), static_cast<int64_t>(absent.size()), verdict.data());
      for (size_t i = 0; i < absent.size(); ++i) {
        if (!verdict[i]) {
          ++absent_rows[g];
          continue;
        }
        admitted[at[i]] = 1;
        made[t].insert(absent[i]);
      }
    }
    return mask([&](int64_t u) { return admitted[u] != 0; });
  }

  // Per group of a table with admission: its unique ids whose slot (host copy) is absent.
  std::vector<int64_t> count_absent(const std::vector<int64_t>& slots) const {
    std::vector<int64_t> out(group_table.size(), 0);
    for (size_t g = 0; g < group_table.size(); ++g) {
      if (!refusing[group_table[g]]) continue;
      for (int64_t u = begin[g]; u < begin[g + 1]; ++u) out[g] += slots[u] < 0;
    }
    return out;
  }
};

}  // namespace sparsecore::cuda
