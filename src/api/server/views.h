#pragma once
// The JSON forms of an adapter's manifest and a trainer's figures, one for every place that prints them: the
// HTTP API and the CLI's --json output.
#include <nlohmann/json.hpp>

#include "adapters/manifest.h"
#include "learning/trainer.h"

namespace hs::api {

// Name, current version, configuration, density, size, event count, and every kept version.
nlohmann::json adapter_json(const AdapterManifest& manifest);
// Counters, losses (the last 256 batches), update latency, quarantine and privacy figures.
nlohmann::json trainer_stats_json(const TrainerStats& stats);

}  // namespace hs::api
