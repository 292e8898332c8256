# adaptd_set_warnings(target): warnings for our own targets only (dependencies are system headers).
function(adaptd_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

# adaptd_use_torch_pch(target): compiles <torch/torch.h> once per target instead of once per file.
function(adaptd_use_torch_pch target)
  target_precompile_headers(${target} PRIVATE <torch/torch.h>)
endfunction()
