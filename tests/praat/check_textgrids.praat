# Opens TextGrids with real Praat and prints what Praat sees, for tests/conftest.py `praat_read`.
# Usage: praat --run check_textgrids.praat LIST_FILE   (LIST_FILE: one TextGrid path per line)
# Output, tab-separated: per file "file  PATH  XMIN  XMAX  N_TIERS", per tier "tier  NAME  KIND  N",
# and per interval of every interval tier "interval  TIER  START  END  LABEL".
form Check TextGrids
    sentence listFile
endform

list = Read Strings from raw text file: listFile$
nFiles = Get number of strings
writeInfo: ""
for f to nFiles
    selectObject: list
    path$ = Get string: f
    tg = Read from file: path$
    xmin = Get start time
    xmax = Get end time
    nTiers = Get number of tiers
    appendInfoLine: "file", tab$, path$, tab$, fixed$(xmin, 6), tab$, fixed$(xmax, 6), tab$, nTiers
    for t to nTiers
        name$ = Get tier name: t
        isInterval = Is interval tier: t
        if isInterval
            n = Get number of intervals: t
            appendInfoLine: "tier", tab$, name$, tab$, "interval", tab$, n
            for k to n
                start = Get start time of interval: t, k
                end = Get end time of interval: t, k
                label$ = Get label of interval: t, k
                appendInfoLine: "interval", tab$, name$, tab$, fixed$(start, 6), tab$, fixed$(end, 6), tab$, label$
            endfor
        else
            n = Get number of points: t
            appendInfoLine: "tier", tab$, name$, tab$, "point", tab$, n
        endif
    endfor
    removeObject: tg
endfor
removeObject: list
