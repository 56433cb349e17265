# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gated_global_optspecs
    string join \n config= log-format= h/help V/version
end

function __fish_gated_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gated_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gated_using_subcommand
    set -l cmd (__fish_gated_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gated -n "__fish_gated_needs_command" -l config -d 'Run the daemon with this configuration file' -r -F
complete -c gated -n "__fish_gated_needs_command" -l log-format -d 'Log format: `text` for people, `json` for collectors' -r -f -a "text\t''
json\t''"
complete -c gated -n "__fish_gated_needs_command" -s h -l help -d 'Print help'
complete -c gated -n "__fish_gated_needs_command" -s V -l version -d 'Print version'
complete -c gated -n "__fish_gated_needs_command" -f -a "check-config" -d 'Validate a configuration file without opening any device; prints every error with file, line and column. Exit status 64 on a bad file'
complete -c gated -n "__fish_gated_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gated -n "__fish_gated_using_subcommand check-config" -l config -d 'The same file, named as the daemon\'s and the other commands\' `--config` names it' -r -F
complete -c gated -n "__fish_gated_using_subcommand check-config" -l log-format -d 'Log format: `text` for people, `json` for collectors' -r -f -a "text\t''
json\t''"
complete -c gated -n "__fish_gated_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c gated -n "__fish_gated_using_subcommand help; and not __fish_seen_subcommand_from check-config help" -f -a "check-config" -d 'Validate a configuration file without opening any device; prints every error with file, line and column. Exit status 64 on a bad file'
complete -c gated -n "__fish_gated_using_subcommand help; and not __fish_seen_subcommand_from check-config help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
