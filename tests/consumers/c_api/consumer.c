/* Links the installed libkvcrush_c and selects from a tiny score matrix. */
#include <stdio.h>

#include <kvcrush/c_api.h>

int main(void) {
  /* 2 KV heads, 8 tokens: keep 4 (sink 1, recent 1, the 2 best in between). */
  const float scores[2 * 8] = {0, 5, 1, 1, 9, 1, 1, 0, /* head 0 */
                               0, 1, 1, 7, 1, 1, 1, 0 /* head 1 */};
  kvcrush_select_options options;
  kvcrush_select_options_init(&options);
  options.budget = 4;
  options.sink = 1;
  options.recent = 1;
  int64_t keep[4], count = 0;
  if (kvcrush_select_scores(NULL, scores, 2, 8, &options, keep, 1, 4, &count) != KVCRUSH_OK) {
    fprintf(stderr, "kvcrush: %s\n", kvcrush_last_error());
    return 1;
  }
  printf("kvcrush %s (%s): kept %lld %lld %lld %lld\n", kvcrush_version(), kvcrush_isa(), (long long)keep[0],
         (long long)keep[1], (long long)keep[2], (long long)keep[3]);
  /* Summed importance: token 4 (10), token 3 (8), then 1 (6). */
  return count == 4 && keep[0] == 0 && keep[1] == 3 && keep[2] == 4 && keep[3] == 7 ? 0 : 1;
}
