// llama.cpp's draft-mtp proposals (Gemma 4 MTP assistant) as a reference for g4rt (issue 26).
//
// Built against libllama + libllama-common of the llama.cpp tree vendored in the llama-cpp-python
// sdist by scripts/build_llama_mtp.sh. It runs the loop of llama.cpp's
// examples/speculative-simple (the same common_speculative_* calls: init, process, begin, draft,
// accept) on a target + `gemma4-assistant` pair, for each prompt given as token ids:
//   - the prompt minus its last token is decoded on the target (and handed to process()),
//   - then `steps` times: draft (pos0 = the last token's position, id_last = that token), record
//     the proposals, verify [id_last, drafts...] on the target, greedy-accept, accept(), and drop
//     the rejected positions from the cache; so drafts are taken at several positions.
// Output (stdout): JSON {"cases": [{"prompt": i, "pos0": P, "history": ids[0..P], "proposals":
// [...], "accepted": n}], "generated": [[...] per prompt]}, history[P] being id_last. With
// --top N each case also has "top" (per draft step the N largest logits and their ids, from a
// replay of the same inputs on the assistant context, which writes no cache, so the loop is
// unchanged) and "hidden" (the target's nextn row the draft started from).
//
// Usage: llama_mtp_proposals --ids IDS.json --steps N [--top N] [llama.cpp common args], e.g.
//   -m TARGET.gguf -md ASSISTANT.gguf --spec-type draft-mtp --spec-draft-n-max 4
//   --spec-draft-n-min 0 --spec-draft-p-min 0 -c 256 -t 2 -ctk f32 -ctv f32 --temp 0
// IDS.json: [[id, id, ...], ...] (BOS included where wanted).

#include "arg.h"
#include "common.h"
#include "log.h"
#include "sampling.h"
#include "speculative.h"
#include "llama.h"
#include "llama-ext.h"   // llama_get_ctx_other (src/)

#include <nlohmann/json.hpp>

#include <algorithm>
#include <clocale>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using json = nlohmann::ordered_json;

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    std::string ids_path;
    int steps = 8;
    int n_top = 0;     // --top N: also replay each draft by hand (llama_process on the assistant
                       // context, the hidden rows copied) and record each step's N largest logits
    std::vector<char *> rest = { argv[0] };
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--ids") == 0 && i + 1 < argc) {
            ids_path = argv[++i];
        } else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            steps = std::atoi(argv[++i]);
        } else if (std::strcmp(argv[i], "--top") == 0 && i + 1 < argc) {
            n_top = std::atoi(argv[++i]);
        } else {
            rest.push_back(argv[i]);
        }
    }
    if (ids_path.empty()) {
        fprintf(stderr, "usage: %s --ids IDS.json [--steps N] -m TARGET -md ASSISTANT --spec-type draft-mtp ...\n", argv[0]);
        return 1;
    }
    std::vector<std::vector<llama_token>> prompts;
    {
        std::ifstream f(ids_path);
        json j = json::parse(f);
        for (auto & p : j) {
            prompts.push_back(p.get<std::vector<llama_token>>());
        }
    }

    common_params params;
    common_init();
    if (!common_params_parse((int) rest.size(), rest.data(), params, LLAMA_EXAMPLE_SPECULATIVE)) {
        return 1;
    }
    const auto output_limits = common_speculative_get_output_limits(
            params.n_batch, params.n_parallel, common_speculative_n_max(&params.speculative));
    params.n_outputs_max = output_limits.total;
    params.n_outputs_max_per_seq = output_limits.per_seq;

    llama_backend_init();
    llama_numa_init(params.numa);

    auto llama_init_tgt = common_init_from_params(params);
    llama_model   * model_tgt = llama_init_tgt->model();
    llama_context * ctx_tgt   = llama_init_tgt->context();
    if (!model_tgt || !ctx_tgt) {
        LOG_ERR("failed to load the target\n");
        return 1;
    }

    common_speculative_init_result_ptr spec_init;
    {
        common_params params_dft = common_base_params_to_speculative(params);
        spec_init = common_speculative_init_from_params(params_dft, model_tgt, ctx_tgt);
        params.speculative.draft.ctx_tgt = ctx_tgt;
        params.speculative.draft.ctx_dft = spec_init->context();
    }
    llama_context * ctx_dft = params.speculative.draft.ctx_dft;
    if (!ctx_dft) {
        LOG_ERR("no draft (MTP) context\n");
        return 1;
    }
    if (llama_get_ctx_other(ctx_dft) != ctx_tgt) {
        LOG_ERR("the assistant context does not share the target's memory (not a gemma4-assistant?)\n");
        return 1;
    }
    if (common_context_can_seq_rm(ctx_tgt) == COMMON_CONTEXT_SEQ_RM_TYPE_NO) {
        LOG_ERR("the target context cannot remove sequence positions\n");
        return 1;
    }
    const bool use_ckpt_tgt = common_context_can_seq_rm(ctx_tgt) == COMMON_CONTEXT_SEQ_RM_TYPE_FULL;
    if (use_ckpt_tgt) {
        LOG_ERR("the target needs checkpoints (not supported by this harness)\n");
        return 1;
    }

    const int n_max = params.speculative.draft.n_max;
    const int n_embd = llama_model_n_embd_out(model_tgt);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model_tgt));
    std::vector<float> h_last;   // the target's hidden row the next draft starts from
    const llama_seq_id seq_id = 0;
    json cases = json::array();
    json generated = json::array();

    for (size_t ip = 0; ip < prompts.size(); ++ip) {
        const auto & inp = prompts[ip];
        if (inp.size() < 2) {
            LOG_ERR("prompt %zu: need at least two tokens\n", ip);
            return 1;
        }
        llama_memory_clear(llama_get_memory(ctx_tgt), true);

        common_sampler_ptr smpl(common_sampler_init(model_tgt, params.sampling));
        common_speculative * spec = common_speculative_init(params.speculative, 1);
        if (spec == nullptr) {
            LOG_ERR("failed to initialize speculative decoding\n");
            return 1;
        }

        {
            common_batch batch_prompt(ctx_tgt);
            for (size_t i = 0; i + 1 < inp.size(); ++i) {
                batch_prompt.add(inp[i], (llama_pos) i, seq_id, false);
            }
            if (llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch_prompt.get()) != 0) {
                LOG_ERR("prompt decode failed\n");
                return 1;
            }
            if (!common_speculative_process(spec, batch_prompt)) {
                LOG_ERR("failed to process the prompt\n");
                return 1;
            }
            const float * h = llama_get_embeddings_nextn_ith(ctx_tgt, (int32_t) inp.size() - 2);
            h_last.assign(h, h + n_embd);
        }

        llama_token id_last = inp.back();
        llama_tokens prompt_tgt(inp.begin(), inp.end() - 1);
        int n_past = (int) inp.size() - 1;
        common_speculative_begin(spec, seq_id, prompt_tgt);

        common_batch batch_tgt(ctx_tgt);
        llama_tokens draft;
        json gen = json::array();

        for (int step = 0; step < steps; ++step) {
            draft.clear();
            common_speculative_get_draft_params(spec, seq_id) = {
                /* .drafting = */ true,
                /* .n_max    = */ n_max,
                /* .pos0     = */ n_past,
                /* .id_last  = */ id_last,
                /* .prompt   = */ &prompt_tgt,
                /* .result   = */ &draft,
            };
            common_speculative_draft(spec);

            json history = prompt_tgt;
            history.push_back(id_last);

            json top = json::array();
            const std::vector<float> h_draft = h_last;   // the target row this draft started from
            if (n_top > 0) {
                // the same inputs as draft(): id_last and h at pos0 for every step, the argmax and
                // the assistant's projected hidden fed back; here the hidden row is copied first
                std::vector<float> h = h_last;
                llama_token tok = id_last;
                common_batch b(ctx_dft);
                for (int k = 0; k < n_max; ++k) {
                    b.clear();
                    const int32_t idx = b.add(tok, n_past, seq_id, true);
                    b.set_embd(idx, { h.data(), 1, (size_t) n_embd });
                    if (llama_process(ctx_dft, LLAMA_PROCESS_TYPE_DECODE, b.get()) != 0) {
                        LOG_ERR("manual draft decode failed\n");
                        return 1;
                    }
                    // with backend sampling (draft-mtp's default) the context returns the top-k
                    // candidates (ids, logits) instead of the full row
                    std::vector<std::pair<float, int>> cand;
                    if (const float * sl = llama_get_sampled_logits_ith(ctx_dft, 0)) {
                        const llama_token * si = llama_get_sampled_candidates_ith(ctx_dft, 0);
                        const uint32_t n = llama_get_sampled_logits_count_ith(ctx_dft, 0);
                        for (uint32_t v = 0; v < n; ++v) cand.push_back({ sl[v], si[v] });
                    } else {
                        const float * lg = llama_get_logits_ith(ctx_dft, 0);
                        for (int v = 0; v < n_vocab; ++v) cand.push_back({ lg[v], v });
                    }
                    const size_t nt = std::min<size_t>(n_top, cand.size());
                    std::partial_sort(cand.begin(), cand.begin() + nt, cand.end(),
                            [](const auto & a, const auto & c) { return a.first > c.first || (a.first == c.first && a.second < c.second); });
                    json ids = json::array(), vals = json::array();
                    for (size_t t = 0; t < nt; ++t) { ids.push_back(cand[t].second); vals.push_back(cand[t].first); }
                    top.push_back({ { "ids", ids }, { "logits", vals } });
                    const float * hn = llama_get_embeddings_nextn_ith(ctx_dft, 0);
                    h.assign(hn, hn + n_embd);
                    tok = cand[0].second;
                }
            }

            batch_tgt.clear();
            batch_tgt.add(id_last, n_past++, seq_id, true);
            for (size_t i = 0; i < draft.size(); ++i) {
                batch_tgt.add(draft[i], n_past + (llama_pos) i, seq_id, true);
            }
            if (llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch_tgt.get()) != 0) {
                LOG_ERR("verification decode failed\n");
                return 1;
            }
            if (!common_speculative_process(spec, batch_tgt)) {
                LOG_ERR("failed to process the verification batch\n");
                return 1;
            }
            auto ids = common_sampler_sample_and_accept_n(smpl.get(), ctx_tgt, draft);
            {
                const float * h = llama_get_embeddings_nextn_ith(ctx_tgt, (int32_t) ids.size() - 1);
                h_last.assign(h, h + n_embd);
            }
            common_speculative_accept(spec, seq_id, (uint16_t) (ids.size() - 1));

            cases.push_back({
                { "prompt",    ip },
                { "pos0",      n_past - 1 },
                { "history",   history },
                { "proposals", draft },
                { "accepted",  ids.size() - 1 },
            });
            if (n_top > 0) {
                cases.back()["top"] = top;
                cases.back()["hidden"] = h_draft;
            }

            n_past += (int) ids.size() - 1;
            for (auto id : ids) {
                prompt_tgt.push_back(id_last);
                id_last = id;
                gen.push_back(id);
            }
            llama_memory_seq_rm(llama_get_memory(ctx_tgt), seq_id, n_past, -1);
            llama_memory_seq_rm(llama_get_memory(ctx_dft), seq_id, n_past, -1);
        }
        generated.push_back(gen);
        common_speculative_free(spec);
    }

    json out = {
        { "n_max",     n_max },
        { "p_min",     params.speculative.draft.p_min },
        { "cases",     cases },
        { "generated", generated },
    };
    printf("%s\n", out.dump().c_str());

    llama_backend_free();
    return 0;
}
