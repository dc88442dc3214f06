# bench/chart.gp: the chart of doc/performance.png, drawn by bench/report.py.
# Left: 4 KiB workloads in thousands of IOPS; right: 1 MiB sequential in MB/s;
# one bar per server, servers in the data files' header order.
# Variables from the caller: dir (data folder), out (PNG path), ttl (title),
# sc and lc (the colour number of each server column of small.dat, large.dat,
# so that a server keeps its colour in both panels).
set terminal pngcairo size 1400,600 font ",10"
set output out
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside top center horizontal font ",9"
set grid ytics
set xtics rotate by -30 font ",9"
set yrange [0:*]
set multiplot layout 1,2 title ttl font ",12"
set size 0.68,0.95
set title "4 KiB random I/O, one connection (thousands of IOPS)"
plot for [i=2:words(sc)+1] dir."/small.dat" using i:xtic(1) title columnheader(i) lc (word(sc,i-1)+0)
set size 0.32,0.95
set origin 0.68,0
set title "1 MiB sequential, QD8 (MB/s)"
set key outside top center horizontal maxcols 3 font ",8"
plot for [i=2:words(lc)+1] dir."/large.dat" using i:xtic(1) title columnheader(i) lc (word(lc,i-1)+0)
unset multiplot
